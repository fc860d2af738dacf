#!/usr/bin/env bash
# Start-up cost of a test broker: `minimq-server --ephemeral` against RabbitMQ.
#
#   bench/startup.sh                 # everything below
#   bench/startup.sh --no-rabbitmq   # minimq only
#
# Measures, on this machine:
#   1. spawn -> JSON line on stdout, STARTUP_RUNS times (50): median, p90, min, max; and
#      stdin closed -> process exit (the graceful stop);
#   2. the resident memory (VmRSS, VmHWM from /proc) of an idle ephemeral broker, 1 s
#      after its line;
#   3. a pytest session of 100 tests each with its own broker (`minimq_fresh_broker`)
#      against the same 100 tests without one: the difference is the brokers' overhead;
#   4. RabbitMQ (Debian's package, /usr/lib/rabbitmq/bin): a private node started the way
#      .ci/run does, timed from `rabbitmq-server -detached` until `rabbitmqctl
#      await_startup` returns, RMQ_RUNS times (1).
#
# Environment: MINIMQ_SERVER (default target/release/minimq-server, built if missing),
# PYTHON (a Python with the minimq package, pytest and pika installed; default the venv
# .ci/run makes, target/py-pkg-venv), STARTUP_RUNS, RMQ_RUNS.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RABBIT=1
for arg in "$@"; do
    case "$arg" in
        --no-rabbitmq) RABBIT=0 ;;
        -h | --help)
            sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "startup.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

SERVER=${MINIMQ_SERVER:-target/release/minimq-server}
if [[ ! -x $SERVER ]]; then
    echo "building $SERVER" >&2
    cargo build --release -p minimq-broker --bin minimq-server >&2
fi
SERVER=$(realpath "$SERVER")
PYTHON=${PYTHON:-target/py-pkg-venv/bin/python}
RUNS=${STARTUP_RUNS:-50}
RMQ_RUNS=${RMQ_RUNS:-1}

echo "== minimq-server --ephemeral: $SERVER"
"$PYTHON" - "$SERVER" "$RUNS" <<'PY'
import json, os, statistics, subprocess, sys, time

server, runs = sys.argv[1], int(sys.argv[2])


def start():
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [server, "--ephemeral", "--exit-with-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    line = p.stdout.readline()
    t1 = time.perf_counter()
    info = json.loads(line)
    return p, info, (t1 - t0) * 1000


def stop(p):
    t0 = time.perf_counter()
    p.stdin.close()
    rc = p.wait(30)
    assert rc == 0, rc
    return (time.perf_counter() - t0) * 1000


starts, stops = [], []
for _ in range(runs):
    p, info, ms = start()
    starts.append(ms)
    stops.append(stop(p))
    assert not os.path.exists(info["data_dir"]), info
starts.sort()


def q(xs, f):
    return xs[min(len(xs) - 1, int(f * len(xs)))]


print(
    f"spawn -> JSON line over {runs} runs: median {statistics.median(starts):.1f} ms, "
    f"p90 {q(starts, 0.9):.1f} ms, min {starts[0]:.1f} ms, max {starts[-1]:.1f} ms"
)
print(f"stdin EOF -> exit: median {statistics.median(stops):.1f} ms")

p, info, _ = start()
time.sleep(1.0)  # idle: what a broker waiting for its test holds
status = dict(
    line.split(":", 1) for line in open(f"/proc/{info['pid']}/status").read().splitlines()
)
print(
    f"idle RSS: VmRSS {status['VmRSS'].strip()}, VmHWM {status['VmHWM'].strip()}, "
    f"threads {status['Threads'].strip()}"
)
stop(p)
PY

echo
echo "== pytest: 100 tests with minimq_fresh_broker vs 100 without"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/test_hundred.py" <<'EOF'
import socket

import pytest


@pytest.mark.parametrize("i", range(100))
def test_fresh(i, minimq_fresh_broker):
    port = int(minimq_fresh_broker.url.rsplit(":", 1)[1].split("/")[0])
    socket.create_connection(("127.0.0.1", port)).close()


@pytest.mark.parametrize("i", range(100))
def test_bare(i):
    socket.socket().close()
EOF
session() { # the wall time of one pytest session, seconds
    local t0 t1
    t0=$(date +%s.%N)
    MINIMQ_SERVER="$SERVER" "$PYTHON" -m pytest -q -p no:cacheprovider "$WORK/test_hundred.py" -k "$1" >"$WORK/out" 2>&1 ||
        { cat "$WORK/out" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
WITH=$(session test_fresh)
BARE=$(session test_bare)
printf 'with brokers %.2f s, without %.2f s: broker overhead %.2f s for 100 (%.1f ms each)\n' \
    "$WITH" "$BARE" "$(echo "$WITH - $BARE" | bc -l)" "$(echo "($WITH - $BARE) * 10" | bc -l)"

[[ $RABBIT == 1 ]] || exit 0
echo
RMQ_BIN=/usr/lib/rabbitmq/bin
if [[ ! -x $RMQ_BIN/rabbitmq-server ]]; then
    echo "RabbitMQ is not installed in $RMQ_BIN (apt-get install rabbitmq-server); skipped"
    exit 0
fi
echo "== RabbitMQ: private node, rabbitmq-server -detached -> rabbitmqctl await_startup"
for run in $(seq "$RMQ_RUNS"); do
    read -r PORT DIST < <("$PYTHON" -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
')
    DIR="$WORK/rabbit-$run"
    NODE="minimq-startup-$$-$run@localhost"
    mkdir -p "$DIR/mnesia" "$DIR/log"
    echo "listeners.tcp.default = 127.0.0.1:$PORT" >"$DIR/rabbitmq.conf"
    echo '[].' >"$DIR/enabled_plugins" # no management plugin: RabbitMQ's best case
    ENV=(HOME="$DIR" RABBITMQ_NODENAME="$NODE" RABBITMQ_DIST_PORT="$DIST"
        RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$DIR/mnesia" RABBITMQ_LOG_BASE="$DIR/log")
    t0=$(date +%s.%N)
    (cd "$DIR" && env "${ENV[@]}" "$RMQ_BIN/rabbitmq-server" -detached)
    # await_startup fails at once until the node is registered with epmd: retried.
    until env "${ENV[@]}" "$RMQ_BIN/rabbitmqctl" -q -n "$NODE" await_startup --timeout 60 >/dev/null 2>&1; do
        sleep 0.1
    done
    t1=$(date +%s.%N)
    printf 'run %d: %.2f s to await_startup\n' "$run" "$(echo "$t1 - $t0" | bc -l)"
    timeout 60 env "${ENV[@]}" "$RMQ_BIN/rabbitmqctl" -q -n "$NODE" stop >/dev/null 2>&1 || true
done
