#!/usr/bin/env bash
# lapin 4.12.3's tests (the crate as published on crates.io: src/ unit tests and
# tests/, which talk to a broker at AMQP_ADDR), unmodified, against a running
# broker, with `cargo test --tests`. The one change to the crate: an empty
# [workspace] table in its Cargo.toml (below).
#
#   tests/interop/suites/lapin.sh minimq|rabbitmq AMQP_ADDR
#
# e.g. lapin.sh minimq amqp://guest:guest@127.0.0.1:5673/%2f
# The .crate file is checked against the checksum crates.io lists for it and
# unpacked once into the cache; it builds with its own Cargo.lock (--locked),
# dependencies from crates.io, into a target directory in the cache, so only
# the first run pays for the build (about 3 minutes on 2 cores). Features: the
# tokio and smol runtimes the tests need, without the default TLS backend
# (no test uses TLS) and without debug info, to keep that build small.
# Exits non-zero when a test not excluded below fails, or when the crate
# cannot be fetched, built or run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 2 ]] || die "usage: $0 minimq|rabbitmq AMQP_ADDR"
BROKER=$1 ADDR=$2

# Tests left out, by name (cargo test --skip):
EXCLUDE_ALL=(
    # tests/ack_after_close.rs: these two assert the outcome of a race — that the
    # broker's channel.close (for a passive declare of a missing queue sent among
    # the acks) reaches lapin before it has written the next 1000 acks — so they
    # pass or fail with the broker's and the machine's speed. Against RabbitMQ
    # 3.10 on a loaded 2-core machine the second failed 15 runs in 50 and the
    # first 4 in 30 ("the close never cut into the acks"); docs/compatibility.md.
    # What they depend on, acks before the failing method applied and those
    # after it discarded, is tested in tests/acks_and_redelivery.rs.
    acks_racing_a_broker_channel_close_all_complete
    concurrent_acks_cut_short_by_a_broker_channel_close_report_its_error
)
EXCLUDE_MINIMQ=()
case $BROKER in
minimq) EXCLUDE=("${EXCLUDE_ALL[@]}" "${EXCLUDE_MINIMQ[@]}") ;;
rabbitmq) EXCLUDE=("${EXCLUDE_ALL[@]}") ;;
*) die "broker must be minimq or rabbitmq, not '$BROKER'" ;;
esac

VERSION=4.12.3
# sha256 of lapin-4.12.3.crate, as the crates.io index lists it
SHA256=3212643cc0031d982f81a62360998106268587237d81d6e8501a0a323e13b656
command -v cargo >/dev/null || die "cargo is not installed"

DIR="$CACHE/lapin-$VERSION"
if [[ ! -f "$DIR/.fetched" ]]; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
    CRATE="$DIR/.lapin-$VERSION.crate"
    timeout 300 curl -sSfL -o "$CRATE" "https://static.crates.io/crates/lapin/lapin-$VERSION.crate" ||
        die "cannot download lapin-$VERSION.crate"
    echo "$SHA256  $CRATE" | sha256sum --check --quiet - || die "lapin-$VERSION.crate: checksum mismatch"
    tar -xzf "$CRATE" -C "$DIR" --strip-components=1 || die "cannot unpack lapin-$VERSION.crate"
    # Its own workspace: unpacked under target/, cargo would otherwise take it for
    # an undeclared member of minimq's workspace and refuse to build it.
    printf '\n[workspace]\n' >>"$DIR/Cargo.toml"
    touch "$DIR/.fetched"
fi
[[ -f "$DIR/Cargo.lock" && -d "$DIR/tests" ]] || die "no Cargo.lock or tests in $DIR"

SKIP=()
for name in "${EXCLUDE[@]}"; do
    SKIP+=(--skip "$name")
done
CARGO=(cargo test --locked --no-default-features --features tokio,smol --tests --no-fail-fast)
export CARGO_TARGET_DIR="$CACHE/lapin-target" CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0

cd "$DIR"
started=$SECONDS
timeout 1800 "${CARGO[@]}" --no-run || die "cargo test --no-run failed"
echo "lapin $VERSION built in $((SECONDS - started)) s"

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
echo "lapin $VERSION tests against $BROKER at $ADDR"
rc=0
env AMQP_ADDR="$ADDR" timeout "$SUITE_TIMEOUT" "${CARGO[@]}" -- --exact "${SKIP[@]}" 2>&1 | tee "$LOG" || rc=$?
[[ $rc -eq 124 ]] && die "timed out after ${SUITE_TIMEOUT}s"

read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed;?$/) p += $(i - 1)
        if ($(i) ~ /^failed;?$/) f += $(i - 1)
    }
} END { print p + 0, f + 0 }' "$LOG")
echo "lapin: $passed passed, $failed failed, ${#EXCLUDE[@]} excluded"
for name in "${EXCLUDE[@]}"; do
    echo "  excluded: $name"
done
grep -E '^test .* \.\.\. FAILED$' "$LOG" | sed 's/^/  /' || true
[[ $passed -gt 0 ]] || die "no test passed: the suite did not run"
if [[ $rc -ne 0 ]]; then
    [[ $failed -gt 0 ]] || echo "  FAILED: cargo test exited with $rc (see its output above)"
    exit 1
fi
