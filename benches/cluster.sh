#!/usr/bin/env bash
# Several popbridge instances over one PostgreSQL, moving the same mailboxes: wall time
# and rate for 1, 2 and 4 instances (or the counts given), each count on fresh mocks and
# a fresh database, and every run judged by the mocks (nothing lost, nothing twice).
#
#   benches/cluster.sh [--mailboxes N] [--messages M] [--size S] [--instances "1 2 4"]
#
# The mocks are `poplab serve` (one POP3 server holding N mailboxes of M messages, one
# SMTP server); each instance is `popbridge fetch` with a [cluster] section, a state
# directory of its own and every account, started at the same moment. PostgreSQL runs
# from Debian's `postgresql` package in a temporary directory, on a unix socket only.
# POPLAB names the poplab binary (default: target/release/poplab, popbridge beside it:
# `cargo build --release -p poplab -p popbridge`). Needs root (PostgreSQL runs as the
# `postgres` user). Loopback and a unix socket only; exits 1 when a run lost or
# duplicated mail, or did not move every message.
set -euo pipefail

mailboxes=200 messages=10 size=10KB instances="1 2 4"
while [ $# -gt 0 ]; do
    case $1 in
        --mailboxes) mailboxes=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --instances) instances=$2; shift 2 ;;
        *) echo "$0: unknown argument $1" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
poplab=${POPLAB:-${CARGO_TARGET_DIR:-$here/target}/release/poplab}
popbridge=$(dirname "$poplab")/popbridge
for bin in "$poplab" "$popbridge"; do
    [ -x "$bin" ] || { echo "$0: no $bin: cargo build --release -p poplab -p popbridge" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "$0: run as root (PostgreSQL runs as postgres)" >&2; exit 2; }
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "$0: PostgreSQL is not installed (package postgresql)" >&2; exit 2; }

dir=$(mktemp -d /tmp/popbridge-cluster-bench.XXXXXX)
chmod 755 "$dir"
serve_pid=
cleanup() {
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
    [ -d "$dir/pg/data" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

# The scenario: N mailboxes of M messages, judged for loss and duplicates.
scenario=$dir/cluster.toml
{
    echo 'description = "cluster bench"'
    for i in $(seq 1 "$mailboxes"); do
        printf '[[pop3.mailbox]]\nuser = "box%d"\npassword = "pw%d"\n' "$i" "$i"
        printf '[[pop3.mailbox.message]]\nlabel = "m%d"\ncount = %d\nsize = "%s"\n' "$i" "$messages" "$size"
    done
    printf '[expect]\nlost = 0\nduplicates = 0\n[expect.labels]\n'
    for i in $(seq 1 "$mailboxes"); do printf 'm%d = "delivered"\n' "$i"; done
} > "$scenario"

start_pg() {
    rm -rf "$dir/pg"; mkdir -p "$dir/pg"; chown postgres "$dir/pg"
    runuser -u postgres -- "$pgbin/initdb" -D "$dir/pg/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg/data" -w -t 60 -l "$dir/pg/server.log" \
        -o "-c listen_addresses='' -k $dir/pg -c fsync=off -c max_connections=200" start >/dev/null
}
stop_pg() {
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg/data" -w -t 60 -m fast stop >/dev/null
}

status=0
echo "| instances | mailboxes × messages | wall s | msg/s | × one instance |"
echo "|---|---|---|---|---|"
one=
for n in $instances; do
    start_pg
    mkfifo "$dir/serve.in"
    "$poplab" serve --check "$scenario" < "$dir/serve.in" > "$dir/serve.out" 2>"$dir/serve.err" &
    serve_pid=$!
    exec 3>"$dir/serve.in"
    for _ in $(seq 100); do [ -s "$dir/serve.out" ] && break; sleep 0.1; done
    read -r addrs < "$dir/serve.out"
    pop3=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pop3"])' "$addrs")
    smtp=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["smtp"])' "$addrs")
    for i in $(seq 1 "$n"); do
        mkdir -p "$dir/i$i"
        {
            printf 'state_dir = "%s/i%d/state"\nparallel_accounts = 4\n' "$dir" "$i"
            printf '[transport]\nhost = "%s"\nport = %s\nhelo = "cluster.bench.invalid"\n' "${smtp%:*}" "${smtp##*:}"
            for b in $(seq 1 "$mailboxes"); do
                printf '[[account]]\nname = "box%d"\nhost = "%s"\nport = %s\ntls = "none"\nallow_plaintext = true\n' "$b" "${pop3%:*}" "${pop3##*:}"
                printf 'username = "box%d"\npassword = "pw%d"\ndeliver_to = "box%d@contoso.local"\n' "$b" "$b" "$b"
            done
            if [ "${NO_CLUSTER:-}" != 1 ]; then
                printf '[cluster]\ndatabase = "postgresql://postgres@/postgres?host=%s/pg"\ninstance = "i%d"\nserver_sessions = 64\n' "$dir" "$i"
            fi
        } > "$dir/i$i/popbridge.toml"
        chmod 600 "$dir/i$i/popbridge.toml"
    done
    started=$(date +%s.%N)
    pids=()
    for i in $(seq 1 "$n"); do
        "$popbridge" --config "$dir/i$i/popbridge.toml" fetch > "$dir/i$i/out" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    ended=$(date +%s.%N)
    exec 3>&-
    wait "$serve_pid" && judged=pass || judged=FAIL
    serve_pid=
    rm -f "$dir/serve.in"
    stop_pg
    total=$((mailboxes * messages))
    wall=$(python3 -c "print(f'{$ended - $started:.2f}')")
    rate=$(python3 -c "print(round($total / ($ended - $started)))")
    [ -z "$one" ] && one=$rate
    ratio=$(python3 -c "print(f'{$rate / $one:.2f}')")
    echo "| $n | $mailboxes × $messages | $wall | $rate | $ratio |"
    if [ "$judged" != pass ]; then
        echo "FAILED with $n instance(s): the mocks' judgement:" >&2
        tail -20 "$dir/serve.out" >&2
        status=1
    fi
done
exit $status
