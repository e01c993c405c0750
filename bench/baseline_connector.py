"""The baseline: OpenFx's original MQTT connector, rendered faithfully.

OpenFx's documented MQTT example subscribes with paho-mqtt and, for every
message, opens a new insecure gRPC channel, calls FxGateway.Invoke
synchronously inside the paho callback (one message at a time) and prints the
reply's Msg. This file keeps exactly that logic.

One addition, needed only for measurement: the reply is published to
`out/<rest of the topic>` (QoS 1) so the benchmark can collect it and time
it. The original prints the reply and publishes nothing.

The gRPC stubs (fxgateway_pb2*.py) are generated from proto/fxgateway.proto
by bench/run.sh into bench/.venv/fxgen (on PYTHONPATH); they are not committed.
"""

import argparse

import grpc
import paho.mqtt.client as mqtt

import fxgateway_pb2
import fxgateway_pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--gateway", default="127.0.0.1:31113")
    ap.add_argument("--topic", default="in/#")
    ap.add_argument("--function", default="echo")
    args = ap.parse_args()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(args.topic, qos=1)

    def on_message(client, userdata, msg):
        # As the original: a new channel for every message, a blocking Invoke,
        # the payload decoded as UTF-8 (the original crashes on anything else).
        with grpc.insecure_channel(args.gateway) as channel:
            stub = fxgateway_pb2_grpc.FxGatewayStub(channel)
            reply = stub.Invoke(
                fxgateway_pb2.InvokeServiceRequest(
                    Service=args.function, Input=msg.payload.decode("utf-8").encode()
                )
            )
        # Addition for measurement (see the module docstring): republish the reply.
        rest = msg.topic.split("/", 1)[1] if "/" in msg.topic else msg.topic
        client.publish("out/" + rest, reply.Msg, qos=1)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="baseline-connector")
    client.max_inflight_messages_set(1000)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_forever()


if __name__ == "__main__":
    main()
