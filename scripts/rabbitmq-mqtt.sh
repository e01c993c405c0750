#!/usr/bin/env bash
# Makes the RUNNING RabbitMQ node (127.0.0.1:5672, managed elsewhere; never
# restarted here) accept MQTT on a loopback port, and prints that port.
#
#   bash scripts/rabbitmq-mqtt.sh        # prints e.g. 1884
#
# Idempotent: when the node already has an MQTT listener, its port is printed
# and nothing changes. Otherwise the rabbitmq_mqtt application is told to
# listen on 127.0.0.1:$FXBRIDGE_RABBITMQ_MQTT_PORT (1884 by default: the
# plugin's default, 1883, belongs to mosquitto here) and the plugin is started
# on the running node, without a node restart.
#
# The listener setting lives only in the running node (application:set_env),
# so the plugin is then removed from the enabled-plugins FILE again (--offline
# changes only the file; the running node keeps the plugin): a later restart
# of the node boots as it was configured before, instead of trying the
# plugin's default port 1883 and failing to boot next to mosquitto. The next
# run of this script enables it again.
set -euo pipefail

PORT="${FXBRIDGE_RABBITMQ_MQTT_PORT:-1884}"

fail() {
  printf 'rabbitmq-mqtt: %s\n' "$*" >&2
  exit 1
}

command -v rabbitmqctl >/dev/null 2>&1 || fail "rabbitmqctl not found (is RabbitMQ installed?)"
command -v rabbitmq-plugins >/dev/null 2>&1 || fail "rabbitmq-plugins not found"

# The port of this node's MQTT listener, or `none`.
active_port() {
  rabbitmqctl -q eval '
    case [P || {listener, N, mqtt, _, _, P, _} <- rabbit_networking:active_listeners(),
               N =:= node()] of
      [P | _] -> P;
      [] -> none
    end.' 2>/dev/null || fail "the RabbitMQ node does not answer rabbitmqctl (is it running?)"
}

current="$(active_port)"
if [[ "$current" =~ ^[0-9]+$ ]]; then
  echo "$current"
  exit 0
fi

# Nothing of ours on the port: it must be free, or the plugin cannot listen.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  fail "127.0.0.1:$PORT is taken by another program; set FXBRIDGE_RABBITMQ_MQTT_PORT to a free port"
fi

# Load first: a set_env before the application is loaded is overwritten by the
# defaults of its .app file when it loads.
rabbitmqctl -q eval "
  case application:load(rabbitmq_mqtt) of
    ok -> ok;
    {error, {already_loaded, rabbitmq_mqtt}} -> ok
  end,
  application:set_env(rabbitmq_mqtt, tcp_listeners, [{\"127.0.0.1\", $PORT}])." >/dev/null \
  || fail "cannot set the MQTT listener through rabbitmqctl eval"
rabbitmq-plugins -q enable --online rabbitmq_mqtt >/dev/null \
  || fail "rabbitmq-plugins enable --online rabbitmq_mqtt failed"
rabbitmq-plugins -q disable --offline rabbitmq_mqtt >/dev/null 2>&1 || true

current="$(active_port)"
[[ "$current" =~ ^[0-9]+$ ]] || fail "rabbitmq_mqtt started but has no listener"
echo "$current"
