#!/usr/bin/env bash
# rabbitpy 3.0.2's integration tests (the sdist's tests/test_integration.py
# and tests/integration/), unmodified, against a running broker.
#
#   tests/interop/suites/rabbitpy.sh AMQP_URL
#
# e.g. rabbitpy.sh amqp://guest:guest@127.0.0.1:5673/%2f
# The tests read the broker from RABBITMQ_URL. Exits non-zero when a test
# fails, or when the suite cannot be fetched or run. No exclusions.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 1 ]] || die "usage: $0 AMQP_URL"
URL=$1

python_venv
DIR="$(fetch_sdist rabbitpy 3.0.2)"
[[ -f "$DIR/tests/test_integration.py" && -d "$DIR/tests/integration" ]] || die "no integration tests in $DIR"
if ! "$PY" -c 'import pytest, dotenv, pamqp' 2>/dev/null; then
    pip_install 'pytest>=8,<10' python-dotenv 'pamqp>=4,<5'
fi

cd "$DIR"
echo "rabbitpy 3.0.2 integration tests against $URL"
# the sources under test are the sdist's own (the current directory); the
# tests log every frame at DEBUG, which pytest shows only for a failure
env RABBITMQ_URL="$URL" timeout "$SUITE_TIMEOUT" "$PY" -m pytest -p no:cacheprovider -q -rfE \
    tests/test_integration.py tests/integration
