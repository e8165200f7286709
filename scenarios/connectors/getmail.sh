#!/bin/sh
# poplab connector template for getmail6 delivering through msmtp: one getmail run = one pass.
#
#   poplab run --connector-cmd 'scenarios/connectors/getmail.sh {pop3_host} {pop3_port} {user} {password} {smtp_host} {smtp_port} {rcpt} {scratch} {timeout}' CASE.toml
#
# The ninth argument, optional, is getmail's retriever `timeout` in seconds (default 180).
# Writes a mode-0600 rc file into the scratch folder, which is also getmail's data folder
# (kept across passes, so its record of retrieved messages survives), polls the POP3 mock
# in plain text (SimplePOP3Retriever, USER/PASS) and hands every message to `msmtp` (an
# MDA_external destination; no msmtp configuration file: everything on its command line),
# which submits it over SMTP to the mock for "rcpt" with the message's envelope sender.
# Environment: POPLAB_GETMAIL_KEEP=1 keeps messages on the server (`delete = false`).
# Exit status: getmail's (0 success, non-zero when a retrieval or delivery failed).
set -eu

. "$(dirname "$0")/common.sh"
connector_args 180 "$@"
ports_and_timeout_are_numbers
for v in "$pop3_host" "$user" "$password" "$smtp_host" "$rcpt"; do
    case $v in
        *'
'*) echo "$0: a value holds a line break" >&2; exit 64 ;;
    esac
done

# A value of the rc file (an INI file with %-interpolation): % written as %%.
ini() { printf '%s' "$1" | sed 's/%/%%/g'; }
# A string inside a Python tuple literal of the rc file: escape \ and ", then % as above.
py() { ini "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"; }

if [ "${POPLAB_GETMAIL_KEEP:-0}" = 1 ]; then delete=false; else delete=true; fi

# getmail wants the MDA's absolute path.
msmtp=$(command -v msmtp) || { echo "$0: msmtp is not installed" >&2; exit 69; }

mkdir -p "$scratch"
rc=$scratch/getmailrc
umask 077
cat > "$rc" <<RC
[retriever]
type = SimplePOP3Retriever
server = $(ini "$pop3_host")
port = $pop3_port
username = $(ini "$user")
password = $(ini "$password")
timeout = $timeout

[destination]
type = MDA_external
path = $(ini "$msmtp")
arguments = ("--host=$(py "$smtp_host")", "--port=$smtp_port", "--tls=off", "--auth=off", "--domain=localhost", "--from=%(sender)", "--", "$(py "$rcpt")")
# CI runs as root; getmail refuses to start an MDA as root unless told to.
allow_root_commands = true

[options]
read_all = true
delete = $delete
received = false
delivered_to = false
verbose = 0
RC
chmod 600 "$rc"

HOME=$scratch
export HOME
exec getmail --getmaildir="$scratch" --rcfile="$rc"
