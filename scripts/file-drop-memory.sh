#!/usr/bin/env bash
# Peak memory of a large file drop: sends a file of SIZE_MIB (default 2048)
# through a local relay and receives it, each process under /usr/bin/time -v,
# and prints the peak RSS of the relay, `send-file` and `receive-all`, plus the
# wall time of each transfer. Needs GNU time (Debian package `time`).
#
#   scripts/file-drop-memory.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-2048}
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

cargo build --release --quiet --bins
bin=$PWD/target/release
work=$(mktemp -d)
trap 'pkill -P "$relay_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

/usr/bin/time -v -o "$work/relay.time" "$bin/sotto-relay" --listen 127.0.0.1:0 --data "$work/relay" \
    >"$work/relay.out" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do grep -q '^relay key:' "$work/relay.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/relay.out")
key=$(sed -n 's/^relay key: //p' "$work/relay.out")

for who in alice bob; do
    SOTTO_HOME=$work/$who "$bin/sotto" init --relay "$addr" --relay-key "$key" >/dev/null 2>&1
done
SOTTO_HOME=$work/alice "$bin/sotto" contact add bob "$(SOTTO_HOME=$work/bob "$bin/sotto" id | head -1)" 2>/dev/null
SOTTO_HOME=$work/bob "$bin/sotto" contact add alice "$(SOTTO_HOME=$work/alice "$bin/sotto" id | head -1)" 2>/dev/null

echo "writing a ${size_mib} MiB file..." >&2
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/big.bin"
mkdir "$work/out"

SOTTO_HOME=$work/alice /usr/bin/time -v -o "$work/send.time" "$bin/sotto" send-file --quiet bob "$work/big.bin"
SOTTO_HOME=$work/bob /usr/bin/time -v -o "$work/recv.time" "$bin/sotto" receive-all --quiet --dir "$work/out" >/dev/null
cmp "$work/big.bin" "$work/out/big.bin"
# Stop the relay itself (the child of /usr/bin/time), so time can report.
pkill -TERM -P "$relay_pid" || true
wait "$relay_pid" || true

peak() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }
wall() { sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$1"; }
printf '%-12s %12s %10s\n' process "peak RSS" "wall"
printf '%-12s %9s MiB %10s\n' sotto-relay "$(( $(peak "$work/relay.time") / 1024 ))" "-"
printf '%-12s %9s MiB %10s\n' send-file "$(( $(peak "$work/send.time") / 1024 ))" "$(wall "$work/send.time")"
printf '%-12s %9s MiB %10s\n' receive-all "$(( $(peak "$work/recv.time") / 1024 ))" "$(wall "$work/recv.time")"
echo "file of ${size_mib} MiB received byte-exact"
