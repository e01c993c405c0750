"""Unit tests of src/fanout.py under plain CPython:
python3 -m unittest discover -s plugins/py-fanout/tests"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from fanout import PluginError, fan_out, parse_config, prepare_input


class ConfigTest(unittest.TestCase):
    def test_null_gives_defaults(self):
        config = parse_config("null")
        self.assertEqual(config["prefix"], "metrics")
        self.assertIsNone(config["qos"])
        self.assertFalse(config["retain"])

    def test_invalid_configs_name_the_problem(self):
        for text, needle in [
            ('{"prefx": "a"}', "unknown key prefx"),
            ('{"prefix": "a/+"}', "prefix"),
            ('{"qos": 3}', "qos"),
            ('{"retain": 1}', "retain"),
            ('{"include": "temp"}', "include"),
            ('{"max_messages": 0}', "max_messages"),
            ("[1]", "expected an object"),
            ("{", "invalid config"),
        ]:
            with self.assertRaises(PluginError) as caught:
                parse_config(text)
            self.assertIn(needle, str(caught.exception), text)


class PrepareInputTest(unittest.TestCase):
    def test_device_added_from_capture(self):
        out = prepare_input(b'{"temp": 21.5}', ["dev-1"])
        self.assertEqual(out, b'{"device":"dev-1","temp":21.5}')

    def test_device_in_payload_kept_and_validated(self):
        self.assertEqual(prepare_input(b'{"device":"d","x":1}', []), b'{"device":"d","x":1}')
        with self.assertRaisesRegex(PluginError, "invalid device id"):
            prepare_input(b'{"device":"a/b"}', [])
        with self.assertRaisesRegex(PluginError, "no device id"):
            prepare_input(b'{"x":1}', [])
        with self.assertRaisesRegex(PluginError, "not JSON"):
            prepare_input(b"\xff", [])


class FanOutTest(unittest.TestCase):
    def test_metrics_object_fans_out_in_order(self):
        config = parse_config('{"prefix": "plant/metrics"}')
        out = fan_out(
            config,
            '{"device":"dev-1","ts":1732600000,"metrics":{"temp_c":21.5,"status":"ok"}}',
            b"{}",
            [],
        )
        self.assertEqual(
            out,
            [
                ("plant/metrics/dev-1/temp_c", b"21.5", [("device", "dev-1"), ("ts", "1732600000")]),
                ("plant/metrics/dev-1/status", b'"ok"', [("device", "dev-1"), ("ts", "1732600000")]),
            ],
        )

    def test_flat_reply_uses_original_device_and_include_filter(self):
        config = parse_config('{"include": ["a", "c"]}')
        out = fan_out(config, '{"a":1,"b":2,"c":[3]}', b'{"device":"d9"}', [])
        self.assertEqual([(t, p) for t, p, _ in out], [("metrics/d9/a", b"1"), ("metrics/d9/c", b"[3]")])

    def test_errors(self):
        config = parse_config('{"max_messages": 1}')
        with self.assertRaisesRegex(PluginError, "more than max_messages"):
            fan_out(config, '{"device":"d","a":1,"b":2}', b"", [])
        with self.assertRaisesRegex(PluginError, "cannot be a topic level"):
            fan_out(parse_config("null"), '{"device":"d","a/b":1}', b"", [])
        with self.assertRaisesRegex(PluginError, "reply is not JSON"):
            fan_out(config, "oops", b"", [])
        self.assertEqual(fan_out(config, '{"device":"d"}', b"", []), [])


if __name__ == "__main__":
    unittest.main()
