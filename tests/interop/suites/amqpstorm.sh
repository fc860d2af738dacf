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
# Excluded against minimq only: tests of the management HTTP API client
# (amqpstorm.management) that use what minimq's --http does not have (it has
# overview, whoami, queues list/get/delete/purge, connections, channels,
# consumers; see docs/compatibility.md, "Management API" and "Client test
# suites"). The suite's other management tests run (overview, whoami,
# channels, passive declares answered 404, an invalid URL).
EXCLUDE_MINIMQ=(
    # exchange and queue declare over HTTP (PUT: 404, 405); by -k, since
    # --deselect takes a prefix and would drop the passive tests that pass
    -k 'not ((test_api_exchange_declare or test_api_queue_declare) and not passive)'
    # aliveness-test (404)
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_aliveness_test
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_context_manager
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_ssl_test
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_url_with_slash
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_with_invalid_credentials
    # nodes, healthchecks (404; healthchecks with a node name reads the overview's contexts, not reported)
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_node
    --deselect=amqpstorm/tests/functional/management/test_api.py::ApiFunctionalTests::test_api_nodes
    --deselect=amqpstorm/tests/functional/management/test_healthcheck.py::ApiHealthchecksFunctionalTests::test_healthtests_get
    --deselect=amqpstorm/tests/functional/management/test_healthcheck.py::ApiHealthchecksFunctionalTests::test_healthtests_get_with_node_name
    # publish and get over HTTP, queue declare (PUT) which these set up with (405)
    --deselect=amqpstorm/tests/functional/management/test_basic.py::ApiBasicFunctionalTests::test_api_basic_get_message
    --deselect=amqpstorm/tests/functional/management/test_basic.py::ApiBasicFunctionalTests::test_api_basic_get_message_requeue
    --deselect=amqpstorm/tests/functional/management/test_basic.py::ApiBasicFunctionalTests::test_api_basic_get_message_to_dict
    --deselect=amqpstorm/tests/functional/management/test_basic.py::ApiBasicFunctionalTests::test_api_basic_publish
    # connections: list() asks for ?page=1&pagination=True and reads page_count; minimq ignores ?page= and answers the bare list (TypeError in http_client.py)
    --deselect=amqpstorm/tests/functional/management/test_connection.py::ApiConnectionFunctionalTests::test_api_connection_client_properties
    --deselect=amqpstorm/tests/functional/management/test_connection.py::ApiConnectionFunctionalTests::test_api_connection_close
    --deselect=amqpstorm/tests/functional/management/test_connection.py::ApiConnectionFunctionalTests::test_api_connection_get
    --deselect=amqpstorm/tests/functional/management/test_connection.py::ApiConnectionFunctionalTests::test_api_connection_list
    # exchanges: get, declare, delete, bindings, list (404)
    --deselect=amqpstorm/tests/functional/management/test_exchange.py::ApiExchangeFunctionalTests::test_api_exchange_bind_and_unbind
    --deselect=amqpstorm/tests/functional/management/test_exchange.py::ApiExchangeFunctionalTests::test_api_exchange_declare_passive_exists
    --deselect=amqpstorm/tests/functional/management/test_exchange.py::ApiExchangeFunctionalTests::test_api_exchange_delete
    --deselect=amqpstorm/tests/functional/management/test_exchange.py::ApiExchangeFunctionalTests::test_api_exchange_get
    --deselect=amqpstorm/tests/functional/management/test_exchange.py::ApiExchangeFunctionalTests::test_api_exchange_list
    --deselect=amqpstorm/tests/functional/management/test_exchange.py::ApiExchangeFunctionalTests::test_api_exchange_list_all
    # queues: declare (PUT, 405) sets up each; vhosts (404) for the list filters
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_bind
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_declare_passive_exists
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_delete
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_get
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_list
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_list_all
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_list_filter_with_regex
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_list_filter_with_regex_boolean
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_list_filter_without_regex
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_list_no_pagination
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_list_pagination
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_purge
    --deselect=amqpstorm/tests/functional/management/test_queue.py::ApiQueueFunctionalTests::test_api_queue_unbind
    # users and permissions (404)
    --deselect=amqpstorm/tests/functional/management/test_user.py::ApiUserFunctionalTests::test_api_delete_bulk
    --deselect=amqpstorm/tests/functional/management/test_user.py::ApiUserFunctionalTests::test_api_user_create
    --deselect=amqpstorm/tests/functional/management/test_user.py::ApiUserFunctionalTests::test_api_user_get
    --deselect=amqpstorm/tests/functional/management/test_user.py::ApiUserFunctionalTests::test_api_user_get_permission
    --deselect=amqpstorm/tests/functional/management/test_user.py::ApiUserFunctionalTests::test_api_user_get_permissions
    --deselect=amqpstorm/tests/functional/management/test_user.py::ApiUserFunctionalTests::test_api_user_list
    # vhosts (404)
    --deselect=amqpstorm/tests/functional/management/test_virtual_host.py::ApiUserFunctionalTests::test_api_virtual_host_create
    --deselect=amqpstorm/tests/functional/management/test_virtual_host.py::ApiUserFunctionalTests::test_api_virtual_host_get
    --deselect=amqpstorm/tests/functional/management/test_virtual_host.py::ApiUserFunctionalTests::test_api_virtual_host_list
    --deselect=amqpstorm/tests/functional/management/test_virtual_host.py::ApiUserFunctionalTests::test_api_virtual_host_permissions
    # the web-based tests create a vhost or publish over HTTP (404)
    --deselect=amqpstorm/tests/functional/test_web_based.py::WebFunctionalTests::test_functional_alternative_virtual_host
    --deselect=amqpstorm/tests/functional/test_web_based.py::WebFunctionalTests::test_functional_consume_web_message
    --deselect=amqpstorm/tests/functional/test_web_based.py::WebFunctionalTests::test_functional_remove_queue_while_consuming
)
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
