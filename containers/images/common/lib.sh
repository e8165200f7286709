# Shared by every server image's /popbridge/start (sourced, bash).
#
# The test copies its inputs into /popbridge/in before the container starts:
#   users             one "name password" line per mail user (system users are made)
#   tls/cert.pem      optional: the server's certificate chain and key (a test CA's)
#   tls/key.pem
#   mail/<user>/*     optional: messages (LF line ends) put into <user>'s store in name order
#   settings          optional: NAME=value lines (limits, poison senders), read by start
# The start script configures its server from them, starts it, waits until its port
# greets, prints "popbridge: ready <port>..." (the readiness line the modules wait for)
# and stays in the foreground as long as the server runs.
set -euo pipefail
IN=/popbridge/in

log() { echo "popbridge: $*" >&2; }

# settings: NAME=value lines, each exported as POPBRIDGE_<NAME>.
if [ -f "$IN/settings" ]; then
  while IFS='=' read -r k v; do
    [ -n "$k" ] && export "POPBRIDGE_$k=$v"
  done <"$IN/settings"
fi

have_tls() { [ -s "$IN/tls/cert.pem" ] && [ -s "$IN/tls/key.pem" ]; }

# Mail users, one name a line.
mail_users() { [ -f "$IN/users" ] && awk 'NF {print $1}' "$IN/users" || true; }

password_of() { awk -v u="$1" '$1 == u {print $2}' "$IN/users"; }

# System users with homes and the given passwords (PAM/shadow for servers that use it).
add_system_users() {
  local u
  for u in $(mail_users); do
    id "$u" >/dev/null 2>&1 || useradd -m -s /bin/sh "$u"
    printf '%s:%s\n' "$u" "$(password_of "$u")" | chpasswd
  done
}

# The messages for a user, in name order.
messages_of() { [ -d "$IN/mail/$1" ] && find "$IN/mail/$1" -maxdepth 1 -type f | LC_ALL=C sort || true; }

# Puts a user's messages into a Maildir (new/), owned by owner[:group].
fill_maildir() { # user maildir owner
  local user=$1 md=$2 owner=$3 f i=0 size wire
  mkdir -p "$md/new" "$md/cur" "$md/tmp"
  for f in $(messages_of "$user"); do
    i=$((i + 1))
    size=$(stat -c %s "$f")
    wire=$((size + $(tr -cd '\n' <"$f" | wc -c)))
    cp "$f" "$md/new/1700000000.M${i}P1.popbridge,S=$size,W=$wire"
  done
  chown -R "$owner" "$md"
  chmod -R go-rwx "$md"
}

# Puts a user's messages into an mbox (mboxrd: a From_ line, ">From " quoting, a blank line after each).
fill_mbox() { # user mbox owner
  local user=$1 mbox=$2 owner=$3 f
  : >"$mbox"
  for f in $(messages_of "$user"); do
    printf 'From MAILER-DAEMON Mon Mar  2 10:00:00 2026\n' >>"$mbox"
    sed 's/^\(>*From \)/>\1/' "$f" >>"$mbox"
    [ -z "$(tail -c1 "$f")" ] || printf '\n' >>"$mbox"
    printf '\n' >>"$mbox"
  done
  chown "$owner" "$mbox"
  chmod 0600 "$mbox"
}

# Waits (at most 20 s) until 127.0.0.1:port answers with a line starting with prefix;
# for "port/tls" (implicit TLS: the server waits for the client) until it accepts.
wait_greeting() { # port[/tls] prefix
  local i line port=${1%/tls}
  for i in $(seq 1 400); do
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
      line=""
      [ "$port" != "$1" ] || read -r -t 5 line <&3 || true
      exec 3<&- 3>&-
      [ "$port" = "$1" ] || return 0
      case "$line" in "$2"*) return 0 ;; esac
    fi
    sleep 0.05
  done
  log "port $1 did not greet with '$2'"
  return 1
}

# Runs the server command in the background, waits for its greetings on the given
# ports, prints the readiness line, then waits for the server to end.
serve() { # "prefix" port... -- command...
  local prefix=$1 ports=() p
  shift
  while [ "$1" != -- ]; do ports+=("$1"); shift; done
  shift
  "$@" &
  local pid=$!
  for p in "${ports[@]}"; do
    wait_greeting "$p" "$prefix" || { kill "$pid" 2>/dev/null; exit 1; }
  done
  echo "popbridge: ready ${ports[*]%/tls}"
  wait "$pid"
}
