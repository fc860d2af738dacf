#!/usr/bin/env bash
# aiormq 7.2.4's tests (the sdist's tests/), unmodified, against a running
# broker, with pytest and aiomisc-pytest as its dev dependencies say.
#
#   tests/interop/suites/aiormq.sh AMQP_URL
#
# e.g. aiormq.sh amqp://guest:guest@127.0.0.1:5673/
# The sdist's tests take the broker from two fixtures of a conftest it does
# not ship (it starts RabbitMQ in Docker); the plugin aiormq_broker.py gives
# them from AMQP_URL. Exits non-zero when a test not excluded below fails,
# or when the suite cannot be fetched or run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 1 ]] || die "usage: $0 AMQP_URL"
URL=$1

# Subset: every broker-facing test runs once per URL variant: "amqp",
# "amqp-named" (the same URL with ?name=pytest, the connection's name in its
# client properties) and the TLS ones. Only "amqp" runs here: the full
# matrix takes more than 3 minutes a broker.
SELECT='not amqp-named'
# Excluded (against every broker):
SELECT+=' and not amqps'                                       # TLS: no TLS listener here
SELECT+=' and not test_ssl_context'                            # TLS: port 5671 of the Docker container
SELECT+=' and not test_auth_external'                          # TLS: EXTERNAL auth with a client certificate
SELECT+=' and not test_ssl_verification_fails_without_trusted_ca' # TLS: expects CERTIFICATE_VERIFY_FAILED
# Client-side races that fail now and then against RabbitMQ 3.10 as well as
# against minimq (seen on a loaded 2-core machine, different variants each run):
SELECT+=' and not test_closing_waiter_cancellation'           # "DID NOT RAISE AMQPConnectionError"
SELECT+=' and not test_connection_close_during_publish_drain' # an exception logged by the drain future

python_venv
DIR="$(fetch_sdist aiormq 7.2.4)"
[[ -f "$DIR/tests/conftest.py" ]] || die "no tests in $DIR"
# the released package, for its metadata (aiormq reads its own version); the
# tests import the sdist's sources from the current directory
if ! "$PY" -c 'import pytest, aiomisc_pytest, yarl, pamqp, aiormq; assert aiormq.__version__ == "7.2.4"' 2>/dev/null; then
    pip_install 'pytest>=8.4,<10' 'aiomisc-pytest>=2,<3' yarl 'pamqp>=4,<5'
    pip_install --no-deps "$DIR/.sdist.tar.gz"
fi

cd "$DIR"
echo "aiormq 7.2.4 tests against $URL"
env PYTHONPATH="$HERE" AMQP_URL="$URL" timeout "$SUITE_TIMEOUT" "$PY" -m pytest -p aiormq_broker -p no:cacheprovider \
    -q -rfE -k "$SELECT" tests
