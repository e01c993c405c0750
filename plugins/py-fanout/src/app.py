"""py-fanout: the fxbridge transform component (world `transform`).

Connects the WIT exports to the pure logic in fanout.py. State is the
parsed config, kept in this module for the life of the instance.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

import fanout

_config = None

_QOS = {
    0: types.Qos.AT_MOST_ONCE,
    1: types.Qos.AT_LEAST_ONCE,
    2: types.Qos.EXACTLY_ONCE,
}


def _configured():
    if _config is None:
        raise Err("plugin hook called before configure")
    return _config


class Setup(exports.Setup):
    def configure(self, config: str) -> None:
        global _config
        try:
            _config = fanout.parse_config(config)
        except fanout.PluginError as e:
            raise Err(str(e))


class BeforeInvoke(exports.BeforeInvoke):
    def transform(self, msg: types.Message) -> types.PreAction:
        _configured()
        try:
            data = fanout.prepare_input(msg.payload, msg.captures)
        except fanout.PluginError as e:
            raise Err(str(e))
        return types.PreAction_Invoke(types.Invocation(input=data, function=None))


class AfterInvoke(exports.AfterInvoke):
    def transform(self, msg: types.Message, reply: str) -> list[types.Outgoing]:
        config = _configured()
        try:
            messages = fanout.fan_out(config, reply, msg.payload, msg.captures)
        except fanout.PluginError as e:
            raise Err(str(e))
        if not messages:
            host.log(host.Level.INFO, f"py-fanout: reply for {msg.topic} has no metrics")
        qos = None if config["qos"] is None else _QOS[config["qos"]]
        return [
            types.Outgoing(
                topic=topic,
                payload=payload,
                qos=qos,
                retain=config["retain"],
                user_properties=properties,
            )
            for topic, payload, properties in messages
        ]
