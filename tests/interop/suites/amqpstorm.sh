#!/usr/bin/env bash
# AMQPStorm 3.1.4's functional tests (the sdist's amqpstorm/tests/functional),
# unmodified, against a running broker.
#
#   tests/interop/suites/amqpstorm.sh minimq|rabbitmq AMQP_URL HTTP_URL
#
# e.g. amqpstorm.sh minimq amqp://guest:guest@127.0.0.1:5673/%2F http://127.0.0.1:15673
# The tests read the broker from AMQP_HOST / AMQP_USERNAME / AMQP_PASSWORD /
# AMQP_URI and the management API from AMQP_HTTP_URL; the plugin
# amqpstorm_port.py gives their Connection(host, user, password) the port.
# Exits non-zero when a test not excluded below fails, or when the suite
# cannot be fetched or run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 3 ]] || die "usage: $0 minimq|rabbitmq AMQP_URL HTTP_URL"
BROKER=$1 URL=$2 HTTP=$3

# Excluded against every broker (each one a property of the test's
# environment, not of a broker):
EXCLUDE_ALL=(
    # TLS: the tests dial amqps on port 5671 with the author's certificates;
    # the brokers here have no TLS listener
    --ignore=amqpstorm/tests/functional/ssl
    # asserts the cluster name of the author's node ('rabbit@rmq.eandersson.net')
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_cluster_name
    # expects a 404 from a web server at 192.168.1.50 on the author's network
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_with_inaccessible
)
# Excluded against minimq only (see docs/compatibility.md, "Client test suites"): none
EXCLUDE_MINIMQ=()
case $BROKER in
minimq) EXCLUDE=("${EXCLUDE_ALL[@]}" "${EXCLUDE_MINIMQ[@]}") ;;
rabbitmq) EXCLUDE=("${EXCLUDE_ALL[@]}") ;;
*) die "broker must be minimq or rabbitmq, not '$BROKER'" ;;
esac

python_venv
DIR="$(fetch_sdist amqpstorm 3.1.4)"
[[ -d "$DIR/amqpstorm/tests/functional" ]] || die "no functional tests in $DIR"
if ! "$PY" -c 'import pytest, requests, pamqp' 2>/dev/null; then
    pip_install 'pytest>=8,<10' 'requests>2' 'pamqp>=4,<5'
fi

# host, port, user, password of the URL
read -r HOST PORT USER PASS < <("$PY" -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(p.hostname, p.port or 5672, u.unquote(p.username or "guest"), u.unquote(p.password or "guest"))
' "$URL")

cd "$DIR"
echo "AMQPStorm 3.1.4 functional tests against $BROKER at $HOST:$PORT (management $HTTP)"
# the sources under test are the sdist's own (the current directory)
env PYTHONPATH="$HERE" AMQP_HOST="$HOST" AMQP_PORT="$PORT" AMQP_USERNAME="$USER" AMQP_PASSWORD="$PASS" \
    AMQP_URI="$URL" AMQP_HTTP_URL="$HTTP" \
    timeout "$SUITE_TIMEOUT" "$PY" -m pytest -p amqpstorm_port -p no:cacheprovider -q -rfE \
    amqpstorm/tests/functional "${EXCLUDE[@]}"
