#!/usr/bin/env bash
# `poplab bench` against real servers: a private Dovecot (POP3, plain text) and Postfix
# smtp-sink, both on free loopback ports, started for the run and stopped after it.
#
#   benches/real-peers.sh [POPLAB BENCH ARGS...]
#   benches/real-peers.sh --messages 2000 --size 10KiB --connector fetchmail
#
# Every argument is passed to `poplab bench`, after the server ones (--pop3, --user,
# --password-file, --smtp, --refill-maildir). POPLAB names the poplab binary (default:
# $CARGO_TARGET_DIR (or target)/release/poplab, with popbridge beside it: `cargo build --release -p poplab -p
# popbridge`). Needs root (the mail store belongs to `mail`, smtp-sink runs as `postfix`),
# Dovecot (dovecot-pop3d) and Postfix installed. Loopback only; exits with poplab's status.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
poplab=${POPLAB:-${CARGO_TARGET_DIR:-$here/target}/release/poplab}
[ -x "$poplab" ] || { echo "$0: no $poplab: cargo build --release -p poplab -p popbridge" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: run as root (the Maildir is given to mail, smtp-sink runs as postfix)" >&2; exit 2; }
for tool in dovecot smtp-sink; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "$0: $tool is not installed" >&2; exit 2; }
done
PATH=$PATH:/usr/sbin

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # PORT: wait (at most 10 s) until something accepts on it
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$0: nothing listens on 127.0.0.1:$1" >&2; return 1
}

# Dovecot's unprivileged processes must traverse the folders: under /tmp, mode 0755.
dir=$(mktemp -d /tmp/poplab-real-peers.XXXXXX)
chmod 755 "$dir"
dovecot_pid= sink_pid=
cleanup() {
    [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
    [ -n "$dovecot_pid" ] && kill "$dovecot_pid" 2>/dev/null || true
    [ -n "$dovecot_pid" ] && wait "$dovecot_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

user=bench
password=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
mail_uid=$(id -u mail) mail_gid=$(id -g mail)
mkdir -p "$dir/run" "$dir/state" "$dir/home/$user/Maildir"/{new,cur,tmp}
chown -R mail:mail "$dir/home"
printf '%s:{PLAIN}%s::::::\n' "$user" "$password" > "$dir/passwd"
chmod 644 "$dir/passwd"
printf '%s\n' "$password" > "$dir/password"
chmod 600 "$dir/password"

pop3_port=$(free_port)
cat > "$dir/dovecot.conf" <<CONF
# poplab bench: a private Dovecot instance.
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
listen = 127.0.0.1
protocols = pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = $mail_uid
passdb {
  driver = passwd-file
  args = $dir/passwd
}
userdb {
  driver = static
  args = uid=$mail_uid gid=$mail_gid home=$dir/home/%u
}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $pop3_port
  }
}
CONF
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dovecot -F -c "$dir/dovecot.conf" >"$dir/dovecot.out" 2>&1 &
dovecot_pid=$!
wait_port "$pop3_port" || { cat "$dir/dovecot.out" "$dir/dovecot.log" >&2 2>/dev/null; exit 2; }

smtp_port=$(free_port)
smtp-sink -u postfix -h sink.bench 127.0.0.1:"$smtp_port" 256 >"$dir/smtp-sink.out" 2>&1 &
sink_pid=$!
wait_port "$smtp_port" || { cat "$dir/smtp-sink.out" >&2; exit 2; }

status=0
"$poplab" bench --pop3 127.0.0.1:"$pop3_port" --user "$user" --password-file "$dir/password" \
    --smtp 127.0.0.1:"$smtp_port" --refill-maildir "$dir/home/$user/Maildir" "$@" || status=$?
exit "$status"
