#!/usr/bin/env bash
# minimq vs RabbitMQ on this machine, same client (minimq-bench), same scenarios.
#
#   bench/compare.sh            # full run: BENCH_SECONDS (10) per scenario, BENCH_FILL (1000000)
#   bench/compare.sh --quick    # smoke run: 2 s per scenario, 50000-message fill
#   bench/compare.sh --report   # re-render the table from the last run's raw results
#
# It installs rabbitmq-server from Debian's packages if it is missing, starts a private
# RabbitMQ node and a release `minimq-server` (--http off) on free ports with data in a
# temporary directory, measures the machine's ceiling (loopback TCP, fdatasync rate of
# that directory's filesystem), runs every scenario against both brokers with
# `minimq-bench --json`, then restarts each broker with BENCH_RESTART persistent messages
# queued (r), and writes the table to docs/benchmarks.md: everything above the marker
# line there is hand-written and kept, everything below it is replaced.
#
# Environment: BENCH_SECONDS, BENCH_FILL, BENCH_RESTART (1000000; 50000 with --quick), BENCH_OUT (default docs/benchmarks.md; "-" for
# stdout only), BENCH_RAW (where the raw JSON lines go; default target/bench-compare),
# BENCH_NO_BUILD=1 (use the binaries already in target/release), BENCH_NOTE (a line
# printed under the heading, e.g. "quiet machine, governor performance"),
# BENCH_SCENARIOS (the scenarios to run, e.g. "t" or "e f t"; default all of
# a b c d e f g h t s r o pika m; the table then has only their rows), BENCH_CONNECTIONS and
# BENCH_QUEUES (idle objects of row o: 5000 and 20000; 500 and 2000 with --quick),
# BENCH_FLOOD (row m: 1464844 transient 1 KiB messages, 1.5 GB; 100000 with --quick).
#
# Row m is a flood under memory pressure: both brokers restarted with a 200 MiB memory
# high watermark, then BENCH_FLOOD transient 1 KiB messages into a non-durable queue with
# no consumer (peak RSS, seconds the publisher was blocked), then the drain (rate, and
# messages lost: must be 0).
#
# Row s is AMQP over TLS: both brokers get a TLS listener with a certificate from
# tests/interop/make_certs.sh, and minimq-bench speaks amqps:// trusting its CA; the same
# load over plain TCP runs beside it, so the table shows what TLS costs each broker.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
REPORT_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --report) REPORT_ONLY=1 ;;
        -h | --help)
            sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "compare.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

if [[ $QUICK == 1 ]]; then
    SECS=${BENCH_SECONDS:-2}
    FILL=${BENCH_FILL:-50000}
    RESTART_N=${BENCH_RESTART:-50000}
    OBJ_CONNECTIONS=${BENCH_CONNECTIONS:-500}
    OBJ_QUEUES=${BENCH_QUEUES:-2000}
    FLOOD=${BENCH_FLOOD:-100000}
else
    SECS=${BENCH_SECONDS:-10}
    FILL=${BENCH_FILL:-1000000}
    RESTART_N=${BENCH_RESTART:-1000000}
    OBJ_CONNECTIONS=${BENCH_CONNECTIONS:-5000}
    OBJ_QUEUES=${BENCH_QUEUES:-20000}
    FLOOD=${BENCH_FLOOD:-1464844}
fi
# Row m's memory high watermark, for both brokers.
FLOOD_WATERMARK=200MiB
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
RAW=${BENCH_RAW:-$ROOT/target/bench-compare}
MARKER='<!-- bench/compare.sh writes everything below this line; edit above it -->'
SERVER=$ROOT/target/release/minimq-server
BENCH=$ROOT/target/release/minimq-bench
RMQ_BIN=/usr/lib/rabbitmq/bin
TICKS=$(getconf CLK_TCK)

log() { printf '[compare %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

SCENARIOS=" ${BENCH_SCENARIOS:-a b c d e f g h t s r o pika m} "
want() { [[ $SCENARIOS == *" $1 "* ]]; }

RESULTS=$RAW/results.jsonl
META=$RAW/meta.json
if [[ $REPORT_ONLY == 0 ]]; then

# --- prerequisites -------------------------------------------------------------------
if [[ ! -x $RMQ_BIN/rabbitmq-server ]]; then
    log "installing rabbitmq-server from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >&2 || {
        DEBIAN_FRONTEND=noninteractive apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server >&2
    }
fi
# The Debian package starts a system node; ours is private and does not touch it.
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -q -p minimq-broker --bin minimq-server \
        -p minimq-cli --bin minimq-bench)
fi
[[ -x $SERVER && -x $BENCH ]] || { echo "compare.sh: no release binaries" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/minimq-compare.XXXXXX")
mkdir -p "$RAW"
# A CA and a localhost certificate for both brokers' TLS listeners (row s).
CERTS=$WORK/certs
"$ROOT/tests/interop/make_certs.sh" "$CERTS"
: >"$RESULTS"
MQ_PID=""
RMQ_PID=""
RMQ_WRAPPER=""
export RABBITMQ_NODENAME="minimqbench$$@localhost"

cleanup() {
    set +e
    if [[ -n $MQ_PID ]]; then kill "$MQ_PID" 2>/dev/null; wait "$MQ_PID" 2>/dev/null; fi
    if [[ -n $RMQ_PID ]]; then
        HOME=$WORK/rabbit timeout 30 "$RMQ_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 \
            || kill "$RMQ_PID" 2>/dev/null
    fi
    if [[ -n $RMQ_WRAPPER ]]; then wait "$RMQ_WRAPPER" 2>/dev/null; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# utime + stime of a process, in seconds (0 when it is gone).
cpu_of() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    # after "comm) ": state is field 1, utime field 12, stime field 13
    awk -v t="$TICKS" '{ printf "%.2f", ($12 + $13) / t }' <<<"$stat"
}

status_kb() { # pid field -> kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# --- machine ceiling -----------------------------------------------------------------
machine_ceiling() {
    local mb=1024 syncs=400
    [[ $QUICK == 1 ]] && mb=256 && syncs=100
    python3 - "$mb" "$syncs" "$WORK" "$BENCH" <<'PY'
import os, socket, subprocess, sys, threading, time, json
mb, syncs, work, bench = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

# Loopback TCP bulk throughput: one sender, one receiver, 64 KiB writes.
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
total = mb * 1024 * 1024
def sink():
    c, _ = srv.accept(); got = 0; buf = bytearray(1 << 20)
    while got < total:
        n = c.recv_into(buf)
        if not n: break
        got += n
    c.close()
t = threading.Thread(target=sink); t.start()
cli = socket.create_connection(("127.0.0.1", port)); chunk = b"x" * 65536
t0 = time.perf_counter(); sent = 0
while sent < total:
    cli.sendall(chunk); sent += len(chunk)
t.join(); bulk = total / (time.perf_counter() - t0)
cli.close()

# Loopback round trips: 16-byte ping-pong between two threads of a compiled program (a
# floor for latency, a ceiling for a consumer with prefetch 1).
n = 20000 if mb >= 1024 else 5000
out = subprocess.run([bench, "--loopback-rtt", str(n), "--json"], check=True,
                     capture_output=True, text=True).stdout
rtt = json.loads(out)["rtt_us"] / 1e6

# fdatasync rate of the filesystem the brokers' data lives on (4 KiB appends).
path = os.path.join(work, "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block = b"y" * 4096
t0 = time.perf_counter()
for _ in range(syncs):
    os.write(fd, block); os.fdatasync(fd)
fs = syncs / (time.perf_counter() - t0)
os.close(fd); os.unlink(path)

# Sequential write bandwidth with a sync every 16 MiB (what a group commit of large
# persistent messages can reach at best).
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block = b"z" * (1 << 20); total_w = (mb // 4) << 20
t0 = time.perf_counter()
for i in range(total_w >> 20):
    os.write(fd, block)
    if i % 16 == 15: os.fdatasync(fd)
os.fdatasync(fd)
wbw = total_w / (time.perf_counter() - t0)
os.close(fd); os.unlink(path)
print(json.dumps({"loopback_mb_s": bulk / 1e6, "rtt_us": rtt * 1e6, "fdatasync_per_s": fs,
                  "write_mb_s": wbw / 1e6}))
PY
}

# --- brokers ---------------------------------------------------------------------------
start_minimq() {
    MQ_PORT=${MQ_PORT:-$(free_port)}
    MQ_TLS_PORT=${MQ_TLS_PORT:-$(free_port)}
    mkdir -p "$WORK/minimq-data"
    "$SERVER" --listen "127.0.0.1:$MQ_PORT" --http off --data-dir "$WORK/minimq-data" \
        --tls-listen "127.0.0.1:$MQ_TLS_PORT" --tls-cert "$CERTS/server.pem" \
        --tls-key "$CERTS/server.key" --tls-ca "$CERTS/ca.pem" --log warn ${MQ_EXTRA:-} \
        >"$WORK/minimq.log" 2>&1 &
    MQ_PID=$!
    wait_port "$MQ_PORT" 20 || { cat "$WORK/minimq.log" >&2; echo "minimq did not start" >&2; exit 1; }
    log "minimq-server pid $MQ_PID on port $MQ_PORT"
}

stop_minimq() {
    kill -TERM "$MQ_PID" 2>/dev/null
    wait "$MQ_PID" 2>/dev/null
    MQ_PID=""
}

stop_rabbitmq() {
    HOME=$WORK/rabbit timeout 120 "$RMQ_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 \
        || kill "$RMQ_PID" 2>/dev/null
    wait "$RMQ_WRAPPER" 2>/dev/null
    RMQ_PID=""; RMQ_WRAPPER=""
}

start_rabbitmq() {
    RMQ_PORT=${RMQ_PORT:-$(free_port)}
    RMQ_TLS_PORT=${RMQ_TLS_PORT:-$(free_port)}
    local dist
    dist=$(free_port)
    local dir=$WORK/rabbit
    mkdir -p "$dir/mnesia" "$dir/log"
    rm -f "$dir/pid"
    echo '[].' >"$dir/enabled_plugins"
    # Defaults otherwise, as a user would run it (classic queues, default watermarks).
    echo 'loopback_users = none' >"$dir/rabbitmq.conf"
    # AMQP over TLS (row s), with the certificate minimq uses.
    cat >>"$dir/rabbitmq.conf" <<EOF
listeners.ssl.default = 127.0.0.1:$RMQ_TLS_PORT
ssl_options.cacertfile = $CERTS/ca.pem
ssl_options.certfile = $CERTS/server.pem
ssl_options.keyfile = $CERTS/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
    # Row m's watermark, when set.
    [[ -n ${RMQ_EXTRA_CONF:-} ]] && echo "$RMQ_EXTRA_CONF" >>"$dir/rabbitmq.conf"
    (
        export HOME=$dir
        export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$RMQ_PORT
        export RABBITMQ_DIST_PORT=$dist RABBITMQ_MNESIA_BASE=$dir/mnesia
        export RABBITMQ_LOG_BASE=$dir/log RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
        export RABBITMQ_CONFIG_FILE=$dir/rabbitmq RABBITMQ_PID_FILE=$dir/pid
        export RABBITMQ_SERVER_START_ARGS="" RABBITMQ_LOGS=$dir/log/rabbit.log
        exec "$RMQ_BIN/rabbitmq-server"
    ) >"$dir/stdout.log" 2>&1 &
    RMQ_WRAPPER=$!
    if ! wait_port "$RMQ_PORT" 120; then
        tail -30 "$dir/stdout.log" >&2
        echo "RabbitMQ did not start" >&2
        exit 1
    fi
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $dir/pid ]] && break
        sleep 0.1
    done
    RMQ_PID=$(cat "$dir/pid" 2>/dev/null || true)
    if [[ -z $RMQ_PID || ! -d /proc/$RMQ_PID ]]; then
        RMQ_PID=$(pgrep -P "$RMQ_WRAPPER" beam.smp | head -1 || true)
    fi
    [[ -n $RMQ_PID ]] || { echo "cannot find the RabbitMQ node's pid" >&2; exit 1; }
    log "RabbitMQ $RABBITMQ_NODENAME pid $RMQ_PID on port $RMQ_PORT"
}

# --- one measurement -----------------------------------------------------------------
# measure SCENARIO BROKER PID URL [minimq-bench args...]
# Appends one JSON line: the report, broker CPU seconds, client CPU seconds, peak RSS.
measure() {
    local scenario=$1 broker=$2 pid=$3 url=$4
    shift 4
    local out=$WORK/out.json err=$WORK/err.txt tm=$WORK/time.txt
    # Reset the peak-RSS mark so VmHWM is this scenario's peak (needs Linux >= 4.0).
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    local cpu0 cpu1 rc=0
    cpu0=$(cpu_of "$pid")
    /usr/bin/time -f '%U %S' -o "$tm" "$BENCH" --url "$url" --json "$@" >"$out" 2>"$err" || rc=$?
    cpu1=$(cpu_of "$pid")
    local hwm rss
    hwm=$(status_kb "$pid" VmHWM)
    rss=$(status_kb "$pid" VmRSS)
    if [[ ! -s $out ]]; then
        log "$scenario/$broker: minimq-bench failed (rc $rc): $(tail -3 "$err" | tr '\n' ' ')"
        echo '{}' >"$out"
    elif [[ $rc != 0 ]]; then
        log "$scenario/$broker: minimq-bench exit $rc: $(tail -2 "$err" | tr '\n' ' ')"
    fi
    python3 - "$scenario" "$broker" "$cpu0" "$cpu1" "$tm" "$hwm" "$rss" "$rc" "$out" "$*" >>"$RESULTS" <<'PY'
import json, sys
scenario, broker, c0, c1, tm, hwm, rss, rc, out, argv = sys.argv[1:]
try:
    u, s = open(tm).read().split()[-2:]
    client = float(u) + float(s)
except Exception:
    client = None
print(json.dumps({
    "scenario": scenario, "broker": broker, "args": argv, "rc": int(rc),
    "report": json.load(open(out)),
    "broker_cpu_s": round(float(c1) - float(c0), 2), "client_cpu_s": client,
    "hwm_kb": int(hwm or 0), "rss_kb": int(rss or 0),
}))
PY
    log "$scenario/$broker: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in ("sent_rate","received_rate","confirmed_rate","exactly_once")}, r.get("latency_ms"))' "$out")"
}

# Every scenario, against one broker.
run_matrix() { # broker pid url
    local b=$1 pid=$2 url=$3 d=$SECS rss
    # The fill goes first, on a fresh broker, so its RSS is not what earlier scenarios left
    # behind (freed memory is not always returned to the OS).
    if want g; then
        rss=$(status_kb "$pid" VmRSS)
        echo "{\"scenario\":\"g-base\",\"broker\":\"$b\",\"rss_kb\":${rss:-0}}" >>"$RESULTS"
        measure g-fill "$b" "$pid" "$url" --queue bench-g --size 16 --fill "$FILL"
        # Let the broker settle (RabbitMQ moves messages between processes after a burst).
        sleep 1
        rss=$(status_kb "$pid" VmRSS)
        echo "{\"scenario\":\"g-rss\",\"broker\":\"$b\",\"rss_kb\":${rss:-0}}" >>"$RESULTS"
        measure g-drain "$b" "$pid" "$url" --queue bench-g --drain --prefetch 100
    fi
    want a && measure a "$b" "$pid" "$url" --queue bench-a --size 16 --auto-ack --duration "$d"
    want b && measure b "$b" "$pid" "$url" --queue bench-b --size 16 --prefetch 100 --duration "$d"
    want c && measure c "$b" "$pid" "$url" --queue bench-c --size 16 --prefetch 1 --duration "$d"
    want d && measure d "$b" "$pid" "$url" --queue bench-d --size 16 --prefetch 100 \
        --producers 4 --consumers 4 --duration "$d"
    want e && measure e "$b" "$pid" "$url" --queue bench-e --size 1024 --persistent --durable \
        --confirm 1000 --prefetch 100 --duration "$d"
    want f && measure f "$b" "$pid" "$url" --queue bench-f --size 65536 --persistent --durable \
        --confirm 1000 --prefetch 100 --duration "$d"
    want h && measure h "$b" "$pid" "$url" --queue bench-h --size 16 --prefetch 100 --rate 10000 \
        --duration "$d"
    want t && measure t "$b" "$pid" "$url" --queue bench-t --size 1024 --persistent --durable \
        --tx 100 --prefetch 100 --duration "$d"
    if want s; then
        local tls_url=$MQ_TLS_URL
        [[ $b == rabbitmq ]] && tls_url=$RMQ_TLS_URL
        measure s-plain "$b" "$pid" "$url" --queue bench-s --size 1024 --prefetch 100 --duration "$d"
        measure s "$b" "$pid" "$tls_url" --ca-cert "$CERTS/ca.pem" --queue bench-s --size 1024 \
            --prefetch 100 --duration "$d"
    fi
    return 0
}

# Restart with a deep durable queue: fill it with persistent 100-byte messages, stop the
# broker gracefully, start it again; time to accepting connections, RSS before and after,
# then drain (which checks that every message came back exactly once).
# restart_row BROKER (uses and updates MQ_*/RMQ_* through start_/stop_ functions)
restart_row() {
    local b=$1 pid port url rss_before rss_after t0 t1
    if [[ $b == minimq ]]; then pid=$MQ_PID; url=$MQ_URL; else pid=$RMQ_PID; url=$RMQ_URL; fi
    measure r-fill "$b" "$pid" "$url" --queue bench-r --size 100 --persistent --durable \
        --confirm 1000 --fill "$RESTART_N"
    sleep 1
    rss_before=$(status_kb "$pid" VmRSS)
    if [[ $b == minimq ]]; then
        stop_minimq
        t0=$(date +%s.%N)
        start_minimq
        t1=$(date +%s.%N)
        pid=$MQ_PID; url=$MQ_URL
    else
        stop_rabbitmq
        t0=$(date +%s.%N)
        start_rabbitmq
        t1=$(date +%s.%N)
        pid=$RMQ_PID; url=$RMQ_URL
    fi
    rss_after=$(status_kb "$pid" VmRSS)
    echo "{\"scenario\":\"r-restart\",\"broker\":\"$b\",\"seconds\":$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'),\"rss_before_kb\":${rss_before:-0},\"rss_after_kb\":${rss_after:-0}}" >>"$RESULTS"
    measure r-drain "$b" "$pid" "$url" --queue bench-r --durable --drain --prefetch 100
}

# Many idle objects, on a freshly restarted broker (freed memory of earlier scenarios would
# hide the cost): RSS growth per idle connection (logged in, no channel, as an idle pika
# BlockingConnection) and per empty queue, with connection and declare/delete rates.
# objects_row BROKER
objects_row() {
    local b=$1 pid url
    if [[ $b == minimq ]]; then
        stop_minimq; start_minimq; pid=$MQ_PID; url=$MQ_URL
    else
        stop_rabbitmq; start_rabbitmq; pid=$RMQ_PID; url=$RMQ_URL
    fi
    measure o-conn "$b" "$pid" "$url" --connections "$OBJ_CONNECTIONS" --broker-pid "$pid"
    measure o-queues "$b" "$pid" "$url" --queues "$OBJ_QUEUES" --broker-pid "$pid"
}

# A flood under memory pressure, on a broker restarted with a FLOOD_WATERMARK watermark:
# FLOOD transient 1 KiB messages into a non-durable queue with no consumer (peak RSS, time
# the publisher was blocked), then the drain (rate; every message exactly once).
# flood_row BROKER
flood_row() {
    local b=$1 pid url
    if [[ $b == minimq ]]; then
        stop_minimq
        MQ_EXTRA="--memory-high-watermark $FLOOD_WATERMARK" start_minimq
        pid=$MQ_PID; url=$MQ_URL
    else
        stop_rabbitmq
        RMQ_EXTRA_CONF="vm_memory_high_watermark.absolute = $FLOOD_WATERMARK" start_rabbitmq
        pid=$RMQ_PID; url=$RMQ_URL
    fi
    measure m-fill "$b" "$pid" "$url" --queue bench-m --size 1024 --consumers 0 --fill "$FLOOD"
    measure m-drain "$b" "$pid" "$url" --queue bench-m --drain --prefetch 100
}

# pika (a third-party client): publish N, then consume N with auto-ack; msg/s each way.
pika_row() { # broker port
    local n=20000
    [[ $QUICK == 1 ]] && n=5000
    python3 - "$1" "$2" "$n" >>"$RESULTS" 2>"$WORK/pika.err" <<'PY' || log "pika row failed for $1: $(tail -2 "$WORK/pika.err")"
import json, sys, time
import pika
broker, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
params = pika.ConnectionParameters("127.0.0.1", port, "/", pika.PlainCredentials("guest", "guest"))
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.queue_declare("bench-pika")
ch.queue_purge("bench-pika")
body = b"x" * 16
t0 = time.perf_counter()
for _ in range(n):
    ch.basic_publish("", "bench-pika", body)
pub = n / (time.perf_counter() - t0)
got = 0
t0 = time.perf_counter()
for method, props, b in ch.consume("bench-pika", auto_ack=True, inactivity_timeout=10):
    if method is None:
        break
    got += 1
    if got == n:
        break
con = got / (time.perf_counter() - t0)
ch.cancel()
conn.close()
print(json.dumps({"scenario": "pika", "broker": broker, "published_rate": pub,
                  "consumed_rate": con, "consumed": got, "expected": n}))
PY
}

# --- run ---------------------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# How idle the CPUs are before the run (5 s sample): a load average would still count a
# build that just finished, and at the end it counts the benchmark itself.
IDLE_BEFORE=$(python3 - <<'PY'
import time
def sample():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return f[3] + f[4], sum(f)
i0, t0 = sample(); time.sleep(5); i1, t1 = sample()
print(f"{100.0 * (i1 - i0) / max(1, t1 - t0):.0f}")
PY
)
log "CPU idle before the run: ${IDLE_BEFORE}%"
log "machine ceiling"
CEILING=$(machine_ceiling)
log "ceiling: $CEILING"

start_minimq
start_rabbitmq
MQ_URL="amqp://guest:guest@127.0.0.1:$MQ_PORT/%2f"
RMQ_URL="amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f"
# The certificate names localhost; the name is checked.
MQ_TLS_URL="amqps://guest:guest@localhost:$MQ_TLS_PORT/%2f"
RMQ_TLS_URL="amqps://guest:guest@localhost:$RMQ_TLS_PORT/%2f"

log "scenarios against minimq (${SECS}s each, fill $FILL)"
run_matrix minimq "$MQ_PID" "$MQ_URL"
log "scenarios against RabbitMQ"
run_matrix rabbitmq "$RMQ_PID" "$RMQ_URL"
if want r; then
    log "restart with $RESTART_N persistent messages queued"
    restart_row minimq
    restart_row rabbitmq
fi
if want o; then
    log "idle objects: $OBJ_CONNECTIONS connections, $OBJ_QUEUES queues"
    objects_row minimq
    objects_row rabbitmq
fi
if ! want pika; then
    :
elif python3 -c 'import pika' 2>/dev/null; then
    log "pika smoke row"
    pika_row minimq "$MQ_PORT"
    pika_row rabbitmq "$RMQ_PORT"
else
    log "pika not installed; no pika row"
fi
if want m; then
    log "flood: $FLOOD transient 1 KiB messages, watermark $FLOOD_WATERMARK"
    flood_row minimq
    flood_row rabbitmq
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# What the report needs besides the results, so that --report can re-render them.
RMQ_VERSION=$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo unknown)
ERLANG_VERSION=$(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null || echo unknown)
export QUICK SECS FILL RESTART_N FLOOD IDLE_BEFORE LOAD_START LOAD_END CEILING RMQ_VERSION ERLANG_VERSION
python3 - >"$META" <<'PY'
import datetime, json, os, platform, subprocess
model = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        model = line.split(":", 1)[1].strip(); break
try:
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
except OSError:
    rustc = "unknown"
e = os.environ
print(json.dumps({
    "quick": e["QUICK"] == "1", "secs": e["SECS"], "fill": int(e["FILL"]),
    "restart": int(e["RESTART_N"]), "flood": int(e["FLOOD"]), "idle_before": float(e["IDLE_BEFORE"]),
    "load_start": e["LOAD_START"], "load_end": e["LOAD_END"], "ceiling": json.loads(e["CEILING"]),
    "rabbitmq": e["RMQ_VERSION"], "erlang": e["ERLANG_VERSION"], "rustc": rustc,
    "nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
    "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
}))
PY
fi # REPORT_ONLY

# --- report ------------------------------------------------------------------------------
[[ -s $RESULTS && -s $META ]] || { echo "compare.sh: no results in $RAW" >&2; exit 1; }
REPORT=$(python3 - "$RESULTS" "$META" <<'PY'
import json, os, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
M = json.load(open(sys.argv[2]))
by = {(r["scenario"], r["broker"]): r for r in rows}
quick = M["quick"]
nproc, model = M["nproc"], M["cpu"]
load_start, load_end = M["load_start"], M["load_end"]
idle_before = M.get("idle_before")
if idle_before is not None:
    busy = idle_before < 80
else:
    busy = max(float(x) for x in (load_start + " " + load_end).split()) > 0.5 * nproc
ceiling = M["ceiling"]
rustc = M["rustc"]

def num(x, unit=""):
    if x is None: return "–"
    if isinstance(x, float) and x < 100: return f"{x:.2f}{unit}"
    return f"{x:,.0f}{unit}"

def pair(a, b, fmt):
    return f"{fmt(a)} / {fmt(b)}"

def mib(kb): return "–" if not kb else f"{kb/1024:.0f}"
def cpu(s): return "–" if s is None else f"{s:.1f}"

# (scenario, label, metric key or function, higher is better)
def rep(r, *path):
    v = r.get("report", {}) if r else {}
    for p in path:
        v = v.get(p) if isinstance(v, dict) else None
    return v

def cpu_per_msg(r):
    n, c = rep(r, "received"), (r or {}).get("broker_cpu_s")
    return c / n * 1e6 if n and c else None

scen = [
    ("a", "a. 1p/1c 16 B auto-ack", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("b", "b. 1p/1c 16 B ack, prefetch 100", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("c", "c. 1p/1c 16 B ack, prefetch 1", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("d", "d. 4p/4c 16 B ack, prefetch 100", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("e", "e. 1 KiB persistent, confirms 1000, ack", "confirmed msg/s", lambda r: rep(r, "confirmed_rate"), True),
    ("e", "e. (same)", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("f", "f. 64 KiB persistent, confirms 1000, ack", "confirmed msg/s", lambda r: rep(r, "confirmed_rate"), True),
    ("f", "f. (same)", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("t", "t. 1 KiB persistent, tx.commit every 100, ack", "committed msg/s", lambda r: rep(r, "committed_rate"), True),
    ("t", "t. (same)", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("s-plain", "s. 1 KiB, prefetch 100, ack, plain TCP (for s)", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("s-plain", "s. (same, plain TCP)", "broker CPU µs/msg", cpu_per_msg, False),
    ("s", "s. 1 KiB, prefetch 100, ack, over TLS (amqps)", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("s", "s. (same, TLS)", "broker CPU µs/msg", cpu_per_msg, False),
    ("g-fill", f"g. fill {int(M['fill']):,} × 16 B", "published msg/s", lambda r: rep(r, "sent_rate"), True),
    ("g-base", "g. broker RSS before the fill (fresh broker)", "MiB", lambda r: (r or {}).get("rss_kb", 0) / 1024 or None, False),
    ("g-rss", "g. broker RSS after the fill", "MiB", lambda r: (r or {}).get("rss_kb", 0) / 1024 or None, False),
    ("g-drain", "g. drain, prefetch 100", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("h", "h. 10,000 msg/s, 16 B, ack", "latency p50 ms", lambda r: rep(r, "latency_ms", "p50"), False),
    ("h", "h. (same)", "latency p99 ms", lambda r: rep(r, "latency_ms", "p99"), False),
    ("r-fill", f"r. fill {int(M.get('restart', 0)):,} × 100 B persistent, durable queue, confirms 1000", "published msg/s", lambda r: rep(r, "sent_rate"), True),
    ("r-restart", "r. graceful restart: stop to accepting connections", "seconds", lambda r: (r or {}).get("seconds"), False),
    ("r-restart", "r. broker RSS before the restart", "MiB", lambda r: (r or {}).get("rss_before_kb", 0) / 1024 or None, False),
    ("r-restart", "r. broker RSS after the restart", "MiB", lambda r: (r or {}).get("rss_after_kb", 0) / 1024 or None, False),
    ("r-drain", "r. drain after the restart, prefetch 100", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("o-conn", "o. idle connections (logged in, no channel), fresh broker", "broker KiB each", lambda r: (rep(r, "bytes_per_object") or 0) / 1024 or None, False),
    ("o-conn", "o. (same)", "opened/s", lambda r: rep(r, "create_rate"), True),
    ("o-queues", "o. empty queues, one connection, 8 channels", "broker KiB each", lambda r: (rep(r, "bytes_per_object") or 0) / 1024 or None, False),
    ("o-queues", "o. (same)", "declared/s", lambda r: rep(r, "create_rate"), True),
    ("o-queues", "o. (same)", "deleted/s", lambda r: rep(r, "delete_rate"), True),
    ("m-fill", f"m. flood {int(M.get('flood', 0)):,} × 1 KiB transient, no consumer, watermark 200 MiB", "published msg/s", lambda r: rep(r, "sent_rate"), True),
    ("m-fill", "m. (same)", "seconds publisher blocked", lambda r: rep(r, "blocked_s"), False),
    ("m-drain", "m. drain, prefetch 100", "received msg/s", lambda r: rep(r, "received_rate"), True),
    ("m-drain", "m. (same)", "messages lost", lambda r: rep(r, "missing"), False),
]
out = []
title = "## Results"
if quick or busy:
    title += ": " + " ".join(x for x in ("SMOKE RUN (`--quick`)" if quick else "",
                                         "on a loaded machine" if busy else "") if x) + ", not a result"
out.append(title)
out.append("")
if quick or busy:
    why = []
    if quick: why.append(f"`--quick` ({M['secs']} s per scenario, fill {int(M['fill']):,})")
    if busy: why.append(f"the machine was busy (CPU idle {idle_before:.0f} % before the run)" if idle_before is not None
                        else f"the machine was busy (load average {load_start} at the start, {load_end} at the end, on {nproc} CPUs)")
    why = " and ".join(why)
    out.append("> **Not a result.** " + why[0].upper() + why[1:] + ". These figures only show that "
               "the script runs end to end against both brokers; a full run of `bench/compare.sh` on a "
               "quiet machine replaces this section.")
    out.append("")
note = os.environ.get("BENCH_NOTE")
if note:
    out.append(note); out.append("")
out.append(f"- date: {M['date']}; "
           f"{'quick' if quick else 'full'} run, {M['secs']} s per scenario")
out.append(f"- machine: {nproc} × {model}; kernel {M['kernel']}; "
           + (f"CPU idle {idle_before:.0f} % in the 5 s before the run; " if idle_before is not None else "")
           + f"load average {load_start} (start), {load_end} (end, the benchmark's own load included)")
out.append(f"- software: {rustc}; RabbitMQ {M['rabbitmq']} (Debian package, default "
           f"config, classic queues), Erlang {M['erlang']}")
out.append(f"- machine ceiling: loopback TCP {ceiling['loopback_mb_s']:,.0f} MB/s (one stream), "
           f"16-byte round trip {ceiling['rtt_us']:.0f} µs (two threads, `minimq-bench --loopback-rtt`), fdatasync {ceiling['fdatasync_per_s']:,.0f}/s "
           f"(4 KiB appends, data directory's filesystem)"
           + (f", sequential write {ceiling['write_mb_s']:,.0f} MB/s (1 MiB writes, fdatasync every 16 MiB)"
              if 'write_mb_s' in ceiling else ""))
out.append("- client: `minimq-bench` (minimq's client) for both brokers; the body carries a 20-byte "
           "header, so \"16 B\" messages are 20 B")
out.append("")
out.append("| scenario | metric | minimq | RabbitMQ | minimq ÷ RabbitMQ | broker CPU s (minimq / RabbitMQ) | client CPU s (minimq / RabbitMQ) | peak RSS MiB (minimq / RabbitMQ) | exactly once |")
out.append("|---|---|---:|---:|---:|---|---|---|---|")
for key, label, metric, f, higher in scen:
    m, r = by.get((key, "minimq")), by.get((key, "rabbitmq"))
    if m is None and r is None:
        continue  # not run (BENCH_SCENARIOS)
    vm, vr = f(m), f(r)
    ratio = "–"
    if vm and vr:
        ratio = f"{vm / vr:.2f}×" + ("" if higher else " (lower is better)")
    if key in ("g-base", "g-rss", "r-restart"):
        extra = ["", "", ""]
        eo = ""
    else:
        extra = [pair(m and m.get("broker_cpu_s"), r and r.get("broker_cpu_s"), cpu),
                 pair(m and m.get("client_cpu_s"), r and r.get("client_cpu_s"), cpu),
                 pair(m and m.get("hwm_kb"), r and r.get("hwm_kb"), mib)]
        def ok(x):
            if not x or not x.get("report"): return "failed"
            if key in ("g-fill", "r-fill", "o-conn", "o-queues", "m-fill"): return "n/a"
            return "yes" if x["report"].get("exactly_once") else f"NO ({x['report'].get('missing')} missing, {x['report'].get('duplicates')} dup)"
        eo = f"{ok(m)} / {ok(r)}"
    out.append(f"| {label} | {metric} | {num(vm)} | {num(vr)} | {ratio} | " + " | ".join(extra) + f" | {eo} |")
pm, pr = by.get(("pika", "minimq")), by.get(("pika", "rabbitmq"))
if pm or pr:
    for k, metric in (("published_rate", "pika publish msg/s"), ("consumed_rate", "pika consume msg/s")):
        vm, vr = pm and pm.get(k), pr and pr.get(k)
        ratio = f"{vm / vr:.2f}×" if vm and vr else "–"
        out.append(f"| pika smoke, 16 B, auto-ack | {metric} | {num(vm)} | {num(vr)} | {ratio} | | | | |")
out.append("")
if any("NO (" in line for line in out):
    out.append("A \"NO\" in the last column: see \"Known measurement issues\" above before "
               "blaming the broker.")
    out.append("")
out.append("Broker CPU is the broker's utime+stime over the scenario (/proc/PID/stat); client CPU is "
           "minimq-bench's user+system time; peak RSS is the broker's VmHWM during the scenario "
           "(reset before each one). Raw reports: `target/bench-compare/results.jsonl`.")
if pm or pr:
    out.append("")
    out.append("The pika row is bound by pika's pure-Python client (one publisher, BlockingConnection, "
               "then one auto-ack consumer); it shows that a third-party client works against both, "
               "not the brokers' speed.")
print("\n".join(out))
PY
)

printf '%s\n' "$REPORT"
if [[ $OUT != - ]]; then
    if [[ -f $OUT ]] && grep -qF "$MARKER" "$OUT"; then
        head_part=$(awk -v m="$MARKER" '{ print } $0 == m { exit }' "$OUT")
    else
        head_part=$(printf '# Benchmarks\n\nRegenerate the section below with `bench/compare.sh` (see its header).\n\n%s' "$MARKER")
    fi
    printf '%s\n\n%s\n' "$head_part" "$REPORT" >"$OUT"
    log "wrote $OUT"
fi
