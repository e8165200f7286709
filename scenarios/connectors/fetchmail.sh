#!/bin/sh
# poplab connector template for fetchmail (6.4): one fetchmail run = one pass.
#
#   poplab run --connector-cmd 'scenarios/connectors/fetchmail.sh {pop3_host} {pop3_port} {user} {password} {smtp_host} {smtp_port} {rcpt} {scratch} {timeout}' CASE.toml
#
# The ninth argument, optional, is fetchmail's `timeout` in seconds (how long it waits for
# a silent server; fetchmail's own default is 300).
# Writes a mode-0600 rc file into the scratch folder (kept across passes, so fetchmail's
# id file survives), polls the POP3 mock in plain text (`sslproto ''`: no STLS) with
# USER/PASS, and forwards every message over SMTP to the mock for "rcpt".
# Environment: POPLAB_FETCHMAIL_KEEP=1 keeps messages on the server (`keep` instead of
# `nokeep`); POPLAB_FETCHMAIL_AUTH sets fetchmail's `auth` (default `password`).
# Exit status: fetchmail's, except 1 ("no mail") which is success here.
set -eu

. "$(dirname "$0")/common.sh"
connector_args 300 "$@"
timeout_is_a_number

if [ "${POPLAB_FETCHMAIL_KEEP:-0}" = 1 ]; then keep=keep; else keep=nokeep; fi

mkdir -p "$scratch"
rc=$scratch/fetchmailrc
umask 077
cat > "$rc" <<RC
set no bouncemail
poll "$(q "$pop3_host")" port $pop3_port protocol POP3 timeout $timeout
  auth ${POPLAB_FETCHMAIL_AUTH:-password}
  user "$(q "$user")" there with password "$(q "$password")" is "$(q "$rcpt")" here
  sslproto ''
  fetchall
  $keep
  smtphost "$(q "$smtp_host")/$smtp_port"
RC
chmod 600 "$rc"

HOME=$scratch FETCHMAILHOME=$scratch
export HOME FETCHMAILHOME
status=0
fetchmail -N --nosyslog --pidfile "$scratch/pid" --idfile "$scratch/ids" -f "$rc" || status=$?
if [ "$status" -eq 1 ]; then
    echo "fetchmail: exit 1 (no mail), reported as 0" >&2
    status=0
fi
exit "$status"
