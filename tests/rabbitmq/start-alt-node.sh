#!/usr/bin/env bash
# Starts a private RabbitMQ node ("warrenalt", port 5673) configured like the
# alt profile of the test suite, with its users and vhosts, so that tests gated
# on TestBroker::start_alt can be validated against RabbitMQ:
#
#   tests/rabbitmq/start-alt-node.sh
#   WARRENMQ_TEST_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
#   WARRENMQ_TEST_ALT_URL=amqp://guest:guest@127.0.0.1:5673/%2f \
#     cargo test --test '*' -- --test-threads=4
#
# Stop it with: RABBITMQ_NODENAME=warrenalt rabbitmqctl stop
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base=/tmp/warrenmq-rabbit-alt
mkdir -p "$base/log" "$base/mnesia"
cp "$here/alt.conf" "$base/rabbitmq.conf"
echo '[].' > "$base/enabled_plugins"
# rabbitmq-server drops privileges to the rabbitmq user when started as root.
if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$base"; fi
export RABBITMQ_NODENAME=warrenalt
export RABBITMQ_NODE_PORT=5673
export RABBITMQ_DIST_PORT=25673
export RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf"
export RABBITMQ_MNESIA_BASE="$base/mnesia"
export RABBITMQ_LOG_BASE="$base/log"
export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
export RABBITMQ_PID_FILE="$base/pid"
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    rabbitmq-server -detached
fi
rabbitmqctl -q wait "$base/pid" --timeout 60
# Users and vhosts of the alt profile (idempotent).
rabbitmqctl -q add_vhost warren-alt 2>/dev/null || true
rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*'
rabbitmqctl -q add_user alice alice-pw 2>/dev/null || true
rabbitmqctl -q set_permissions -p warren-alt alice '.*' '.*' '.*'
rabbitmqctl -q add_user bob bob-pw 2>/dev/null || true
echo "alt RabbitMQ node listening on 5673"
