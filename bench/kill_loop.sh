#!/usr/bin/env bash
# kill -9 under load, many times: publishers with confirms and an acking consumer run
# against a release minimq-server that is killed at a random moment, restarted, and so on;
# at the end the queue is drained and every confirmed message must have been delivered.
#
#   bench/kill_loop.sh          # 100 kills
#   bench/kill_loop.sh 20       # 20 kills
#
# Prints one line of counts: sent, confirmed, delivered, lost (must be 0), and duplicates
# split by what the client knew of the ack when the server died (sent / in doubt / none).
# The test is crates/broker/tests/crash.rs, kill_loop_with_consumers_acking_loses_no_confirmed_message.
set -euo pipefail
cd "$(dirname "$0")/.."
CYCLES="${1:-100}"
MINIMQ_KILL_CYCLES="$CYCLES" cargo test --release -p minimq-broker --test crash \
    kill_loop_with_consumers_acking_loses_no_confirmed_message -- --nocapture 2>&1 |
    grep -E '^kill loop:|panicked|test result' 
