#!/bin/sh
# poplab connector template for popbridge itself, run as a separate process, so that it
# meets exactly the worlds, faults and SIGKILLs an external connector meets:
#
#   poplab chaos --connector-cmd 'scenarios/connectors/popbridge.sh {pop3_host} {pop3_port} {user} {password} {smtp_host} {smtp_port} {rcpt} {scratch} {timeout}'
#
# Writes a configuration into the scratch folder (kept across passes, with the ledger
# under it) and runs one `popbridge fetch`: one pass. POPBRIDGE_BIN names the binary
# (default: `popbridge` on PATH). The ninth argument, optional, is the command timeout in
# seconds (default 60; the data timeout is twice it).
# Exit status: popbridge's (1 = some messages stay on the server, as a pass under faults
# often ends; 4 = a backlog left for the next pass).
set -eu

. "$(dirname "$0")/common.sh"
connector_args 60 "$@"
timeout_is_a_number
case $pop3_port$smtp_port in
    *[!0-9]*) echo "$0: ports must be numbers" >&2; exit 64 ;;
esac

mkdir -p "$scratch"
umask 077
conf=$scratch/popbridge.toml
cat > "$conf" <<TOML
state_dir = "$(q "$scratch/state")"

[transport]
host = "$(q "$smtp_host")"
port = $smtp_port
helo = "popbridge.poplab.invalid"

[timeouts]
connect = "10s"
command = "${timeout}s"
data = "$((timeout * 2))s"

[[account]]
name = "info"
host = "$(q "$pop3_host")"
port = $pop3_port
tls = "none"
allow_plaintext = true
auth = "user"
username = "$(q "$user")"
password = "$(q "$password")"
deliver_to = "$(q "$rcpt")"
TOML

exec "${POPBRIDGE_BIN:-popbridge}" --config "$conf" --events "$scratch/events.jsonl" fetch
