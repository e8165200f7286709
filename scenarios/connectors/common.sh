#!/bin/sh
# What the connector templates beside it share (sourced by them, never run by itself): the
# check of their eight or nine arguments, the checks of the numbers among them, and the
# escape of a value written inside double quotes. It never writes a file or runs a program.

# The template's arguments: POP3_HOST POP3_PORT USER PASSWORD SMTP_HOST SMTP_PORT RCPT
# SCRATCH [TIMEOUT]; sets one variable each, `timeout` defaulting to $1. Exit 64 (usage)
# for any other count.
connector_args() {
    default_timeout=$1
    shift
    if [ "$#" -ne 8 ] && [ "$#" -ne 9 ]; then
        echo "usage: $0 POP3_HOST POP3_PORT USER PASSWORD SMTP_HOST SMTP_PORT RCPT SCRATCH [TIMEOUT]" >&2
        exit 64
    fi
    pop3_host=$1 pop3_port=$2 user=$3 password=$4 smtp_host=$5 smtp_port=$6 rcpt=$7 scratch=$8
    timeout=${9:-$default_timeout}
}

# Exit 64 unless TIMEOUT is a number of seconds.
timeout_is_a_number() {
    case $timeout in
        ''|*[!0-9]*) echo "$0: TIMEOUT must be a number of seconds, not '$timeout'" >&2; exit 64 ;;
    esac
}

# Exit 64 unless both ports and TIMEOUT are numbers.
ports_and_timeout_are_numbers() {
    for n in "$pop3_port" "$smtp_port" "$timeout"; do
        case $n in
            ''|*[!0-9]*) echo "$0: ports and TIMEOUT must be numbers, not '$n'" >&2; exit 64 ;;
        esac
    done
}

# A value inside double quotes of an rc or TOML file: escape \ and ".
q() { printf '%s' "$1" | sed 's/[\\"]/\\&/g'; }
