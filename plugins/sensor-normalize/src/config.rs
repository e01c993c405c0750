//! The route's `transform.config` for sensor-normalize: parsing, defaults
//! and validation, so the hooks can rely on a consistent configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::quantity::{PerQuantity, Quantity};

/// Validated plugin configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Which topic capture holds the device id when the payload has none.
    pub device_capture: usize,
    /// Per-device calibration, applied after unit conversion.
    pub device_calibration: BTreeMap<String, PerQuantity<Calibration>>,
    /// Accepted range per quantity, in canonical units.
    pub ranges: PerQuantity<Range>,
    /// Deadband per quantity, in canonical units; 0 disables it.
    pub deadband: PerQuantity<f64>,
    /// Decimal places kept in canonical values.
    pub decimals: u32,
    /// Topic of the post hook's result; `None` uses the route's topic.
    pub reply_topic: Option<TopicTemplate>,
    /// QoS of the post hook's result (0, 1, 2); `None` uses the route's.
    pub reply_qos: Option<u8>,
    /// Most devices whose last accepted values are remembered.
    pub max_devices: usize,
}

/// `value * scale + offset`, in canonical units.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    #[serde(default)]
    pub offset: f64,
    #[serde(default = "one")]
    pub scale: f64,
}

/// An inclusive range of accepted values.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

fn one() -> f64 {
    1.0
}

/// The config as written in bridge.yaml; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device_capture: Option<usize>,
    #[serde(default)]
    device_calibration: BTreeMap<String, RawPerQuantity<Calibration>>,
    #[serde(default)]
    ranges: RawPerQuantity<Range>,
    #[serde(default)]
    deadband: RawPerQuantity<f64>,
    decimals: Option<u32>,
    reply_topic: Option<String>,
    reply_qos: Option<u8>,
    max_devices: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerQuantity<T> {
    temperature: Option<T>,
    pressure: Option<T>,
    humidity: Option<T>,
}

impl<T> Default for RawPerQuantity<T> {
    fn default() -> Self {
        RawPerQuantity {
            temperature: None,
            pressure: None,
            humidity: None,
        }
    }
}

impl<T: Copy> RawPerQuantity<T> {
    fn or(&self, defaults: PerQuantity<T>) -> PerQuantity<T> {
        PerQuantity {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            pressure: self.pressure.unwrap_or(defaults.pressure),
            humidity: self.humidity.unwrap_or(defaults.humidity),
        }
    }
}

/// Default accepted ranges: -80..150 °C, 300..1100 hPa, 0..100 %.
pub const DEFAULT_RANGES: PerQuantity<Range> = PerQuantity {
    temperature: Range {
        min: -80.0,
        max: 150.0,
    },
    pressure: Range {
        min: 300.0,
        max: 1100.0,
    },
    humidity: Range {
        min: 0.0,
        max: 100.0,
    },
};

const IDENTITY: Calibration = Calibration {
    offset: 0.0,
    scale: 1.0,
};

impl Config {
    /// Parses and validates the JSON config (`null` gives the defaults).
    pub fn from_json(json: &str) -> Result<Config, String> {
        let raw: Option<RawConfig> =
            serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
        let raw = raw.unwrap_or_default();
        let config = Config {
            device_capture: raw.device_capture.unwrap_or(0),
            device_calibration: raw
                .device_calibration
                .iter()
                .map(|(device, cal)| (device.clone(), cal.or(PerQuantity::splat(IDENTITY))))
                .collect(),
            ranges: raw.ranges.or(DEFAULT_RANGES),
            deadband: raw.deadband.or(PerQuantity::splat(0.0)),
            decimals: raw.decimals.unwrap_or(2),
            reply_topic: raw
                .reply_topic
                .as_deref()
                .map(TopicTemplate::parse)
                .transpose()?,
            reply_qos: raw.reply_qos,
            max_devices: raw.max_devices.unwrap_or(10_000),
        };
        config.validate()?;
        Ok(config)
    }

    /// The calibration of `device` for `quantity` (identity when unset).
    pub fn calibration(&self, device: &str, quantity: Quantity) -> Calibration {
        self.device_calibration
            .get(device)
            .map_or(IDENTITY, |cal| *cal.get(quantity))
    }

    fn validate(&self) -> Result<(), String> {
        for quantity in Quantity::ALL {
            let range = self.ranges.get(quantity);
            if !(range.min.is_finite() && range.max.is_finite() && range.min < range.max) {
                return Err(format!(
                    "invalid config: ranges.{}: need finite min < max, got {} .. {}",
                    quantity.name(),
                    range.min,
                    range.max
                ));
            }
            let band = *self.deadband.get(quantity);
            if !(band.is_finite() && band >= 0.0) {
                return Err(format!(
                    "invalid config: deadband.{}: need a finite value >= 0, got {band}",
                    quantity.name()
                ));
            }
        }
        for (device, cal) in &self.device_calibration {
            for quantity in Quantity::ALL {
                let c = cal.get(quantity);
                if !(c.offset.is_finite() && c.scale.is_finite() && c.scale != 0.0) {
                    return Err(format!(
                        "invalid config: device_calibration.{device}.{}: need finite offset and non-zero finite scale",
                        quantity.name()
                    ));
                }
            }
        }
        if self.decimals > 9 {
            return Err(format!(
                "invalid config: decimals: at most 9, got {}",
                self.decimals
            ));
        }
        if let Some(qos) = self.reply_qos {
            if qos > 2 {
                return Err(format!("invalid config: reply_qos: 0, 1 or 2, got {qos}"));
            }
        }
        if self.max_devices == 0 {
            return Err("invalid config: max_devices: must be at least 1".to_string());
        }
        Ok(())
    }
}

/// A topic with `{device}`, `{route}` and `{function}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Device,
    Route,
    Function,
}

impl TopicTemplate {
    /// Parses a template; rejects unknown placeholders, unbalanced braces and
    /// MQTT wildcards (a publish topic cannot contain `+` or `#`).
    pub fn parse(template: &str) -> Result<TopicTemplate, String> {
        let bad = |why: &str| Err(format!("invalid config: reply_topic {template:?}: {why}"));
        if template.is_empty() {
            return bad("empty");
        }
        if template.contains(['+', '#']) {
            return bad("contains an MQTT wildcard");
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return bad("unbalanced '}'");
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return bad("unclosed '{'");
            };
            parts.push(match &rest[open + 1..open + close] {
                "device" => Part::Device,
                "route" => Part::Route,
                "function" => Part::Function,
                other => return bad(&format!("unknown placeholder {{{other}}}")),
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return bad("unbalanced '}'");
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(TopicTemplate { parts })
    }

    /// Fills in the placeholders.
    pub fn render(&self, device: &str, route: &str, function: &str) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.as_str(),
                Part::Device => device,
                Part::Route => route,
                Part::Function => function,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_gives_defaults() {
        let config = Config::from_json("null").unwrap();
        assert_eq!(config.device_capture, 0);
        assert_eq!(config.ranges, DEFAULT_RANGES);
        assert_eq!(config.deadband, PerQuantity::splat(0.0));
        assert_eq!(config.decimals, 2);
        assert_eq!(config.reply_topic, None);
        assert_eq!(config.calibration("any", Quantity::Temperature), IDENTITY);
    }

    #[test]
    fn partial_calibration_and_ranges_fill_in_defaults() {
        let config = Config::from_json(
            r#"{"device_calibration": {"dev-1": {"temperature": {"offset": -0.5}}},
                "ranges": {"humidity": {"min": 5, "max": 95}}}"#,
        )
        .unwrap();
        assert_eq!(
            config.calibration("dev-1", Quantity::Temperature),
            Calibration {
                offset: -0.5,
                scale: 1.0
            }
        );
        assert_eq!(config.calibration("dev-1", Quantity::Pressure), IDENTITY);
        assert_eq!(config.calibration("dev-2", Quantity::Temperature), IDENTITY);
        assert_eq!(
            config.ranges.humidity,
            Range {
                min: 5.0,
                max: 95.0
            }
        );
        assert_eq!(config.ranges.temperature, DEFAULT_RANGES.temperature);
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_key() {
        for (json, needle) in [
            (r#"{"deadbnad": {}}"#, "unknown field `deadbnad`"),
            (
                r#"{"ranges": {"temperature": {"min": 5, "max": 1}}}"#,
                "ranges.temperature",
            ),
            (r#"{"deadband": {"pressure": -1}}"#, "deadband.pressure"),
            (
                r#"{"device_calibration": {"d": {"humidity": {"scale": 0}}}}"#,
                "device_calibration.d.humidity",
            ),
            (r#"{"reply_qos": 3}"#, "reply_qos"),
            (
                r#"{"reply_topic": "a/{devic}"}"#,
                "unknown placeholder {devic}",
            ),
            (r#"{"reply_topic": "a/+/b"}"#, "wildcard"),
            (r#"{"decimals": 12}"#, "decimals"),
            (r#"[1]"#, "invalid config"),
        ] {
            let err = Config::from_json(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn topic_template_renders_placeholders() {
        let t = TopicTemplate::parse("results/{route}/{device}/{function}").unwrap();
        assert_eq!(
            t.render("dev-1", "sensors", "fn"),
            "results/sensors/dev-1/fn"
        );
        let t = TopicTemplate::parse("{device}").unwrap();
        assert_eq!(t.render("d", "r", "f"), "d");
        for bad in ["", "a/{device", "a}/b", "x/{device}}", "{}"] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
