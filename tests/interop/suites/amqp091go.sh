#!/usr/bin/env bash
# amqp091-go 1.5.0's tests (the official Go client), unmodified, with
# `-tags integration` against a running broker, as its Makefile's
# `tests` target runs them.
#
#   tests/interop/suites/amqp091go.sh minimq|rabbitmq AMQP_URL
#
# e.g. amqp091go.sh minimq amqp://guest:guest@127.0.0.1:5673/
# The release comes from Debian bookworm: golang-github-rabbitmq-amqp091-go-dev
# 1.5.0 (the module's source with its tests), golang-uber-goleak-dev (the
# tests' one dependency) and golang-go (Go 1.19); apt-get installs them when
# they are missing and this runs as root. The sources are copied into a
# GOPATH under the cache and built there in GOPATH mode, without a network
# (the module proxy is off). Exits non-zero when a test not excluded below
# fails, or when the suite cannot be installed or run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 2 ]] || die "usage: $0 minimq|rabbitmq AMQP_URL"
BROKER=$1 URL=$2

# Tests left out, by name (go test -run takes the rest):
EXCLUDE_ALL=()
EXCLUDE_MINIMQ=(
    # These three open a connection and test only when the server's product is
    # "RabbitMQ" (minimq's is "minimq", docs/compatibility.md), and only then
    # close it: against minimq they test nothing and leave their connection
    # open, which the suite's goleak check at the end reports as leaked
    # goroutines, failing the whole run.
    TestIntegrationRecoverNotImplemented
    TestRabbitMQQueueTTLGet
    TestRabbitMQQueueNackMultipleRequeue
)
case $BROKER in
minimq) EXCLUDE=("${EXCLUDE_ALL[@]}" "${EXCLUDE_MINIMQ[@]}") ;;
rabbitmq) EXCLUDE=("${EXCLUDE_ALL[@]}") ;;
*) die "broker must be minimq or rabbitmq, not '$BROKER'" ;;
esac

VERSION=1.5.0
PACKAGES=(golang-go golang-github-rabbitmq-amqp091-go-dev golang-uber-goleak-dev)
SRC=/usr/share/gocode/src/github.com/rabbitmq/amqp091-go
GOLEAK=/usr/share/gocode/src/go.uber.org/goleak

installed_version() {
    dpkg-query -W -f '${Version}' golang-github-rabbitmq-amqp091-go-dev 2>/dev/null || true
}
if ! command -v go >/dev/null || [[ ! -f "$SRC/integration_test.go" || ! -d "$GOLEAK" ]]; then
    [[ "$(id -u)" -eq 0 ]] || die "${PACKAGES[*]} are not installed, and not root to apt-get install them"
    command -v apt-get >/dev/null || die "${PACKAGES[*]} are not installed, and apt-get is unavailable"
    echo "apt-get install ${PACKAGES[*]}"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null ||
        die "apt-get install ${PACKAGES[*]} failed"
fi
[[ "$(installed_version)" == "$VERSION"-* ]] ||
    die "golang-github-rabbitmq-amqp091-go-dev is $(installed_version), not $VERSION"

# a GOPATH of its own: the package's sources as released, goleak beside them;
# GOCACHE keeps the compiled test binary's inputs between runs
DIR="$CACHE/amqp091-go-$VERSION"
PKG="$DIR/gopath/src/github.com/rabbitmq/amqp091-go"
if [[ ! -f "$DIR/.fetched" ]]; then
    rm -rf "$DIR"
    mkdir -p "$(dirname "$PKG")" "$DIR/gopath/src/go.uber.org"
    cp -r "$SRC" "$PKG" || die "cannot copy $SRC"
    cp -rL "$GOLEAK" "$DIR/gopath/src/go.uber.org/goleak" || die "cannot copy $GOLEAK"
    touch "$DIR/.fetched"
fi

GO_ENV=(GO111MODULE=off GOPATH="$DIR/gopath" GOCACHE="$DIR/gocache" GOPROXY=off GOFLAGS= CGO_ENABLED=0)
cd "$PKG"
TESTS=()
while read -r name; do
    [[ "$name" =~ ^(Test|Example|Fuzz|Benchmark) ]] || continue
    [[ " ${EXCLUDE[*]} " == *" $name "* ]] && continue
    TESTS+=("$name")
done < <(env "${GO_ENV[@]}" go test -tags integration -list '.*' . || die "go test -list failed")
[[ ${#TESTS[@]} -gt 0 ]] || die "go test -list found no tests"
RUN="^($(IFS='|'; echo "${TESTS[*]}"))\$"

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
echo "amqp091-go $VERSION tests (-tags integration) against $BROKER at $URL: ${#TESTS[@]} run, ${#EXCLUDE[@]} excluded"
rc=0
env "${GO_ENV[@]}" AMQP_URL="$URL" timeout "$SUITE_TIMEOUT" \
    go test -tags integration -count=1 -v -run "$RUN" . 2>&1 | tee "$LOG" || rc=$?
[[ $rc -eq 124 ]] && die "timed out after ${SUITE_TIMEOUT}s"

passed=$(grep -c '^--- PASS' "$LOG" || true)
failed=$(grep -c '^--- FAIL' "$LOG" || true)
skipped=$(grep -c '^--- SKIP' "$LOG" || true)
echo "amqp091-go: $passed passed, $failed failed, $skipped skipped, ${#EXCLUDE[@]} excluded"
for name in "${EXCLUDE[@]}"; do
    echo "  excluded: $name"
done
grep '^--- FAIL' "$LOG" | sed 's/^/  /' || true
[[ $passed -gt 0 ]] || die "no test passed: the suite did not run"
if [[ $rc -ne 0 ]]; then
    # e.g. goleak's check in TestMain, after every test passed
    [[ $failed -gt 0 ]] || echo "  FAILED: go test exited with $rc (see its output above)"
    exit 1
fi
