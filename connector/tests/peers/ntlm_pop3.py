#!/usr/bin/env python3
"""A small POP3 server whose AUTH NTLM acceptor is pyspnego, for popbridge's interop test.

Responsible for: an NTLM login checked by an implementation independent of popbridge's
(pyspnego's own NTLM code, forced with NegotiateOptions.use_ntlm), and just enough
POP3 (RFC 1939, 2449, 5034) around it to fetch and delete: greeting, CAPA, AUTH NTLM,
STAT, LIST, UIDL, RETR, DELE, RSET, NOOP, QUIT. Deletions remove the message files at
QUIT only (the UPDATE state).
Must never: listen off loopback, accept any login but a verified NTLM one, or print a
password or an NTLM message.

Usage: NTLM_USER_FILE=users ntlm_pop3.py MAILDROP_DIR
  NTLM_USER_FILE  pyspnego's credential file, lines DOMAIN:USER:PASSWORD
  MAILDROP_DIR    one message per file (sent sorted by name, as stored: CRLF line ends)

Prints the port it listens on (127.0.0.1, a free port) as one line on standard output:
that line is the readiness signal. Each login is recorded on standard error as
`AUTH OK <DOMAIN\\user>` or `AUTH FAILED <reason>`, each applied deletion as
`DELETED <file>`. Serves one connection at a time until killed.
"""

import base64
import os
import socket
import sys

import spnego

MAX_LINE = 16 * 1024


def log(text):
    print(text, file=sys.stderr, flush=True)


class Session:
    def __init__(self, conn, maildrop):
        self.conn = conn
        self.reader = conn.makefile("rb")
        self.maildrop = maildrop
        self.user = None
        self.messages = []
        self.deleted = set()

    def send(self, line):
        self.conn.sendall(line.encode() + b"\r\n")

    def read_line(self):
        line = self.reader.readline(MAX_LINE)
        if not line:
            return None
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    def load(self):
        names = sorted(os.listdir(self.maildrop))
        self.messages = []
        for name in names:
            with open(os.path.join(self.maildrop, name), "rb") as f:
                self.messages.append((name, f.read()))

    def pick(self, arg):
        try:
            n = int(arg)
        except (TypeError, ValueError):
            return None
        if 1 <= n <= len(self.messages) and n not in self.deleted:
            return n
        return None

    def live(self):
        return [n for n in range(1, len(self.messages) + 1) if n not in self.deleted]

    def auth_ntlm(self):
        """The exchange Exchange speaks: +, NEGOTIATE, + CHALLENGE, AUTHENTICATE."""
        ctx = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        self.send("+")
        while True:
            line = self.read_line()
            if line is None:
                return False
            if line == "*":
                self.send("-ERR Authentication cancelled")
                log("AUTH FAILED cancelled by the client")
                return True
            try:
                token = base64.b64decode(line, validate=True)
                out = ctx.step(token)
            except Exception as e:  # pyspnego raises its own errors for a bad response
                self.send("-ERR [AUTH] Authentication failed")
                log("AUTH FAILED %s" % type(e).__name__)
                return True
            if ctx.complete:
                self.user = ctx.client_principal
                self.load()
                self.send("+OK Logged in, %d messages" % len(self.messages))
                log("AUTH OK %s" % self.user)
                return True
            self.send("+ " + base64.b64encode(out or b"").decode())

    def serve(self):
        self.send("+OK ntlm-pop3 ready")
        while True:
            line = self.read_line()
            if line is None:
                return
            words = line.split(" ")
            cmd = words[0].upper()
            arg = words[1] if len(words) > 1 else None
            if cmd == "QUIT":
                self.update()
                self.send("+OK Bye")
                return
            if cmd == "CAPA":
                caps = ["UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
                if self.user is None:
                    caps.append("SASL NTLM")
                self.send("+OK Capability list follows")
                for c in caps:
                    self.send(c)
                self.send(".")
            elif cmd == "NOOP":
                self.send("+OK")
            elif self.user is None:
                if cmd == "AUTH" and arg is None:
                    self.send("+OK Methods supported")
                    self.send("NTLM")
                    self.send(".")
                elif cmd == "AUTH" and arg.upper() == "NTLM" and len(words) == 2:
                    if not self.auth_ntlm():
                        return
                elif cmd == "AUTH":
                    self.send("-ERR Unsupported authentication mechanism")
                else:
                    self.send("-ERR Log in with AUTH NTLM first")
            elif cmd == "STAT":
                live = self.live()
                size = sum(len(self.messages[n - 1][1]) for n in live)
                self.send("+OK %d %d" % (len(live), size))
            elif cmd in ("LIST", "UIDL"):
                def item(n):
                    name, data = self.messages[n - 1]
                    return "%d %s" % (n, len(data) if cmd == "LIST" else name)

                if arg is not None:
                    n = self.pick(arg)
                    self.send("+OK " + item(n) if n else "-ERR No such message")
                else:
                    self.send("+OK")
                    for n in self.live():
                        self.send(item(n))
                    self.send(".")
            elif cmd == "RETR":
                n = self.pick(arg)
                if not n:
                    self.send("-ERR No such message")
                    continue
                data = self.messages[n - 1][1]
                out = [b"+OK %d octets" % len(data)]
                body = data[:-2] if data.endswith(b"\r\n") else data
                for l in body.split(b"\r\n"):
                    out.append(b"." + l if l.startswith(b".") else l)
                out.append(b".")
                self.conn.sendall(b"\r\n".join(out) + b"\r\n")
            elif cmd == "DELE":
                n = self.pick(arg)
                if not n:
                    self.send("-ERR No such message")
                    continue
                self.deleted.add(n)
                self.send("+OK Marked")
            elif cmd == "RSET":
                self.deleted.clear()
                self.send("+OK")
            else:
                self.send("-ERR Unknown command")

    def update(self):
        for n in sorted(self.deleted):
            name = self.messages[n - 1][0]
            os.remove(os.path.join(self.maildrop, name))
            log("DELETED %s" % name)


def main():
    if len(sys.argv) != 2 or not os.environ.get("NTLM_USER_FILE"):
        print(__doc__, file=sys.stderr)
        return 2
    maildrop = sys.argv[1]
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    print(server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                Session(conn, maildrop).serve()
            except (ConnectionError, OSError) as e:
                log("SESSION ENDED %s" % type(e).__name__)


if __name__ == "__main__":
    sys.exit(main())
