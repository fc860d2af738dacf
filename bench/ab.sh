#!/usr/bin/env bash
# Interleaved A/B of broker CPU per message: A = one minimq-server, B = another, the same
# minimq-bench for both, rounds alternating A B A B so drift on a shared machine hits both.
# bench/compare.sh's scenarios a (auto-ack), b (prefetch 100), d (4 producers, 4
# consumers), persistent ones with confirms (through the store's writer and syncer: e 1 KiB,
# f 64 KiB), a paced load (h: 10,000 msg/s), a fill of a transient queue with nobody
# consuming and its drain (g), and the drain of a backlog paged out to disk (page-in). Not c (prefetch 1): its
# open-loop producer floods the queue and the run is the drain of that backlog, minutes long.
# Usage: bench/ab.sh OLD_SERVER NEW_SERVER BENCH   (ROUNDS=3 SECS=8 by default)
set -euo pipefail
OLD=$1 NEW=$2 BENCH=$3 ROUNDS=${ROUNDS:-3} SECS=${SECS:-8}
start() { # server -> sets dir port pid
    dir=$(mktemp -d); port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$1" --listen "127.0.0.1:$port" --http off --data-dir "$dir" --log warn 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break; sleep 0.05; done
}
report() { # label t0 t1 out args
    python3 - "$@" <<'PY'
import json, os, sys
label, t0, t1, out, args = sys.argv[1:]
r = json.loads(out.strip().splitlines()[-1])
hz = os.sysconf("SC_CLK_TCK")
cpu = (int(t1) - int(t0)) / hz
n = r.get("received") or r.get("sent") or 0
print(f"{label:4} {args:78} recv/s {r.get('received_rate',0):>9,.0f}  broker CPU {cpu:6.2f} s  {1e6*cpu/max(n,1):6.3f} µs/msg", flush=True)
PY
}
run() { # label server scenario-args...
    local label=$1 server=$2; shift 2
    start "$server"
    local t0 t1 out
    t0=$(awk '{print $14+$15}' /proc/$pid/stat)
    out=$("$BENCH" --url "amqp://guest:guest@127.0.0.1:$port/%2f" --json "$@" 2>/dev/null)
    t1=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
    report "$label" "$t0" "$t1" "$out" "$*"
}
drain() { # label server: fill a durable queue past its memory budget, time the drain
    local label=$1 server=$2 n=${DRAIN_N:-150000}
    start "$server"
    local url="amqp://guest:guest@127.0.0.1:$port/%2f"
    "$BENCH" --url "$url" --queue ab-d --size 1024 --persistent --durable --confirm 1000 --fill "$n" >/dev/null 2>&1
    local t0 t1 out
    t0=$(awk '{print $14+$15}' /proc/$pid/stat)
    out=$("$BENCH" --url "$url" --json --queue ab-d --durable --drain --prefetch 100 2>/dev/null)
    t1=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
    report "$label" "$t0" "$t1" "$out" "drain $n x 1 KiB persistent (paged out past 64 MiB)"
}
fill() { # label server: publish-only fill of FILL_N x 16 B, then its drain, each timed
    local label=$1 server=$2 n=${FILL_N:-300000}
    start "$server"
    local url="amqp://guest:guest@127.0.0.1:$port/%2f" t0 t1 t2 out1 out2
    t0=$(awk '{print $14+$15}' /proc/$pid/stat)
    out1=$("$BENCH" --url "$url" --json --queue ab-g --size 16 --fill "$n" 2>/dev/null)
    t1=$(awk '{print $14+$15}' /proc/$pid/stat)
    out2=$("$BENCH" --url "$url" --json --queue ab-g --drain --prefetch 100 2>/dev/null)
    t2=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
    report "$label" "$t0" "$t1" "$out1" "g: fill $n x 16 B, nobody consuming"
    report "$label" "$t1" "$t2" "$out2" "g: drain of that fill"
}
for i in $(seq "$ROUNDS"); do
  for side in A B; do
    srv=$OLD; [[ $side == B ]] && srv=$NEW
    run "$side" "$srv" --queue ab-a --size 16 --auto-ack --duration "$SECS"
    run "$side" "$srv" --queue ab-b --size 16 --prefetch 100 --duration "$SECS"
    run "$side" "$srv" --queue ab-4 --size 16 --prefetch 100 --producers 4 --consumers 4 --duration "$SECS"
    run "$side" "$srv" --queue ab-p --size 1024 --persistent --durable --confirm 1000 --prefetch 100 --duration "$SECS"
    run "$side" "$srv" --queue ab-q --size 65536 --persistent --durable --confirm 100 --prefetch 100 --duration "$SECS"
    run "$side" "$srv" --queue ab-h --size 16 --prefetch 100 --rate 10000 --duration "$SECS"
    fill "$side" "$srv"
    drain "$side" "$srv"
  done
done
