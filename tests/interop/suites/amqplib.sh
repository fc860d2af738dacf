#!/usr/bin/env bash
# amqplib 2.2.0's test suite (the npm package's test/, all files), unmodified,
# against a running broker, with `node --test` as its own `npm test` runs it.
#
#   tests/interop/suites/amqplib.sh minimq|rabbitmq AMQP_URL
#
# e.g. amqplib.sh minimq amqp://guest:guest@127.0.0.1:5673
# channel_api.test.js reads the broker from URL; the other files dial
# amqp://localhost (and amqp://[::1] for the ipv6 test) on the default port,
# which the preload amqplib_port.js replaces with the URL's port: the broker
# must listen on 127.0.0.1 and [::1] on that port, with guest/guest.
# Exits non-zero when a test not excluded below fails, or when the suite
# cannot be fetched or run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 2 ]] || die "usage: $0 minimq|rabbitmq AMQP_URL"
BROKER=$1 URL=$2

# Failures tolerated, as "suite > ... > test" (the path the junit report
# gives; it names no file):
EXCLUDE_ALL=()
EXCLUDE_MINIMQ=(
    # test/connect.test.js: asserts serverProperties.product == 'RabbitMQ';
    # minimq names itself (product "minimq"), so that a client can tell the
    # brokers apart
    "Connect > Connect API > serverProperties"
)
case $BROKER in
minimq) EXCLUDE=("${EXCLUDE_ALL[@]}" "${EXCLUDE_MINIMQ[@]}") ;;
rabbitmq) EXCLUDE=("${EXCLUDE_ALL[@]}") ;;
*) die "broker must be minimq or rabbitmq, not '$BROKER'" ;;
esac

command -v node >/dev/null || die "node is not installed"
command -v npm >/dev/null || die "npm is not installed"
# node --test's junit reporter: Node 20.13 and later
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 13) ? 0 : 1)' ||
    die "node $(node --version) is older than 20.13"

DIR="$CACHE/amqplib-2.2.0"
if [[ ! -f "$DIR/.fetched" ]]; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
    (cd "$DIR" && timeout 300 npm pack --silent amqplib@2.2.0 >/dev/null) || die "npm pack amqplib@2.2.0 failed"
    tar -xzf "$DIR/amqplib-2.2.0.tgz" -C "$DIR" --strip-components=1 || die "cannot unpack amqplib-2.2.0.tgz"
    # the tests' one dependency (bitset.test.js); no install scripts
    (cd "$DIR" && timeout 300 npm install --silent --no-save --ignore-scripts --no-audit --no-fund claire@0.4.1) ||
        die "npm install claire failed"
    touch "$DIR/.fetched"
fi
[[ -d "$DIR/test" && -d "$DIR/node_modules/claire" ]] || die "no tests or no claire in $DIR"

PORT="$(node -e 'const u = new URL(process.argv[1]); console.log(u.port || 5672)' "$URL")"
REPORT="$(mktemp)"
trap 'rm -f "$REPORT"' EXIT

cd "$DIR"
echo "amqplib 2.2.0 tests against $BROKER at $URL (and localhost / [::1] port $PORT)"
# --test-timeout: npm test's is 1000 ms a test; 5000 here, for shared CI machines
rc=0
env NODE_OPTIONS="--require $HERE/amqplib_port.js" AMQPLIB_DIR="$DIR" AMQP_PORT="$PORT" URL="$URL" \
    timeout "$SUITE_TIMEOUT" node --test --test-timeout=5000 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=junit --test-reporter-destination="$REPORT" test/ || rc=$?
[[ $rc -eq 124 ]] && die "timed out after ${SUITE_TIMEOUT}s"
[[ -s "$REPORT" ]] || die "node --test wrote no report (exit code $rc)"

python3 - "$REPORT" "$rc" "${EXCLUDE[@]}" <<'PY'
import sys
import xml.etree.ElementTree as ET

report, rc, excluded = sys.argv[1], int(sys.argv[2]), set(sys.argv[3:])
root = ET.parse(report).getroot()
passed, failed, skipped = 0, [], 0


def walk(node, path):
    global passed, skipped
    for child in node:
        if child.tag == "testsuite":
            walk(child, path + [child.get("name", "")])
        elif child.tag == "testcase":
            name = " > ".join(path + [child.get("name", "")])
            if child.find("failure") is not None or child.find("error") is not None:
                failed.append(name)
            elif child.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1


walk(root, [])
unexpected = [f for f in failed if f not in excluded]
tolerated = [f for f in failed if f not in unexpected]
print(f"amqplib: {passed} passed, {len(failed)} failed ({len(tolerated)} excluded), {skipped} skipped")
for f in tolerated:
    print(f"  excluded failure: {f}")
for f in unexpected:
    print(f"  FAILED: {f}")
if passed == 0:
    sys.exit("amqplib: no test passed: the suite did not run")
if unexpected or (rc != 0 and not failed):
    sys.exit(1)
PY
