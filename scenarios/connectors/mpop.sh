#!/bin/sh
# poplab connector template for mpop (1.4) delivering through msmtp: one mpop run = one pass.
#
#   poplab run --connector-cmd 'scenarios/connectors/mpop.sh {pop3_host} {pop3_port} {user} {password} {smtp_host} {smtp_port} {rcpt} {scratch} {timeout}' CASE.toml
#
# The ninth argument, optional, is mpop's `timeout` in seconds (default 180).
# Writes a mode-0600 rc file into the scratch folder (kept across passes, so mpop's UIDL
# file survives), polls the POP3 mock in plain text (`tls off`) with USER/PASS, and hands
# every message to `msmtp` (no configuration file: host, port and envelope given on its
# command line), which submits it over SMTP to the mock for "rcpt", with the envelope
# sender mpop found in the message (%F).
# Environment: POPLAB_MPOP_KEEP=1 keeps messages on the server (`keep on`).
# Exit status: mpop's (sysexits: 0 success, 69 service unavailable, 75 temporary
# failure, 76 protocol error, 77 authentication refused ...).
set -eu

. "$(dirname "$0")/common.sh"
connector_args 180 "$@"
ports_and_timeout_are_numbers

# A word for sh inside the rc file's double quotes: single-quoted for sh, then escaped for mpop.
sq() { q "'$(printf '%s' "$1" | sed "s/'/'\\\\''/g")'"; }

if [ "${POPLAB_MPOP_KEEP:-0}" = 1 ]; then keep=on; else keep=off; fi

mkdir -p "$scratch"
rc=$scratch/mpoprc
umask 077
# msmtp reads no configuration (HOME is the scratch folder, which has none) and is told
# everything: --host, --port, no TLS, no authentication, the envelope sender and recipient.
mda="msmtp --host=$(sq "$smtp_host") --port=$smtp_port --tls=off --auth=off --domain=localhost --from=%F -- $(sq "$rcpt")"
cat > "$rc" <<RC
defaults
timeout $timeout
uidls_file "$(q "$scratch/uidls")"

account poplab
host "$(q "$pop3_host")"
port $pop3_port
tls off
auth user
user "$(q "$user")"
password "$(q "$password")"
only_new off
keep $keep
delivery mda "$mda"

account default : poplab
RC
chmod 600 "$rc"

HOME=$scratch
export HOME
exec mpop --quiet -C "$rc" poplab
