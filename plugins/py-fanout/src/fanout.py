"""Pure logic of py-fanout, free of WIT bindings so it runs under plain CPython.

Pre hook: a device's JSON reading is passed on as compact JSON, with the
device id added from the first topic capture when the payload has none.
Post hook: the function's JSON reply carries several metrics; each becomes
its own message on `<prefix>/<device>/<metric>`, its payload the metric's
value as JSON text.
"""

import json

DEFAULTS = {
    "prefix": "metrics",
    "qos": None,
    "retain": False,
    "include": None,
    "max_messages": 32,
}

# Keys of a flat reply that are not metrics.
RESERVED = ("device", "ts")


class PluginError(Exception):
    """A message-level failure; becomes the hook's `err` result."""


def parse_config(text):
    """Validates the route's transform config (JSON text, `null` = defaults)."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise PluginError(f"invalid config: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PluginError("invalid config: expected an object")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise PluginError(f"invalid config: unknown key {unknown[0]}")
    config = dict(DEFAULTS, **raw)
    if not isinstance(config["prefix"], str) or not valid_topic(config["prefix"]):
        raise PluginError("invalid config: prefix must be a topic without wildcards")
    if config["qos"] is not None and config["qos"] not in (0, 1, 2):
        raise PluginError("invalid config: qos must be 0, 1 or 2")
    if not isinstance(config["retain"], bool):
        raise PluginError("invalid config: retain must be true or false")
    include = config["include"]
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(m, str) for m in include)
    ):
        raise PluginError("invalid config: include must be a list of metric names")
    limit = config["max_messages"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise PluginError("invalid config: max_messages must be a positive integer")
    return config


def valid_topic(topic):
    return topic != "" and "+" not in topic and "#" not in topic and "\0" not in topic


def valid_level(level):
    """One topic level: non-empty, no separator or wildcard."""
    return isinstance(level, str) and level != "" and valid_topic(level) and "/" not in level


def device_of(doc, captures):
    """The device id from the document or the first topic capture."""
    device = doc.get("device") if isinstance(doc, dict) else None
    if device is None and captures:
        device = captures[0]
    if device is None:
        raise PluginError("no device id: none in the message and no topic capture")
    if not valid_level(device):
        raise PluginError(f"invalid device id {json.dumps(device)}")
    return device


def prepare_input(payload, captures):
    """Pre hook: returns the function's input bytes."""
    try:
        doc = json.loads(payload)
    except ValueError as e:
        raise PluginError(f"payload is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PluginError("payload is not a JSON object")
    if "device" not in doc:
        doc = {"device": device_of(doc, captures), **doc}
    else:
        device_of(doc, captures)
    return json.dumps(doc, separators=(",", ":")).encode()


def fan_out(config, reply, payload, captures):
    """Post hook: returns a list of (topic, payload bytes, user properties).

    `payload` and `captures` are the original message's, used for the device
    when the reply has none.
    """
    try:
        doc = json.loads(reply)
    except ValueError:
        raise PluginError(f"reply is not JSON: {reply[:80]!r}") from None
    if not isinstance(doc, dict):
        raise PluginError("reply is not a JSON object")
    if "device" in doc:
        device = device_of(doc, [])
    else:
        try:
            original = json.loads(payload)
        except ValueError:
            original = None
        device = device_of(original, captures)
    if "metrics" in doc:
        metrics = doc["metrics"]
        if not isinstance(metrics, dict):
            raise PluginError("reply field metrics is not an object")
    else:
        metrics = {k: v for k, v in doc.items() if k not in RESERVED}
    if config["include"] is not None:
        metrics = {k: v for k, v in metrics.items() if k in config["include"]}
    if len(metrics) > config["max_messages"]:
        raise PluginError(
            f"reply has {len(metrics)} metrics, more than max_messages ({config['max_messages']})"
        )
    properties = [("device", device)]
    if "ts" in doc:
        properties.append(("ts", json.dumps(doc["ts"])))
    out = []
    for name, value in metrics.items():
        if not valid_level(name):
            raise PluginError(f"metric name {json.dumps(name)} cannot be a topic level")
        topic = f"{config['prefix']}/{device}/{name}"
        out.append((topic, json.dumps(value, separators=(",", ":")).encode(), list(properties)))
    return out
