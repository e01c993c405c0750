//! The pre hook's pipeline: parse, resolve the device, convert units,
//! calibrate, round, check ranges, apply the deadband, and produce the
//! canonical JSON document sent to the function.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::quantity::{PerQuantity, Quantity};
use crate::reading::{resolve_device, RawReading};

/// The document the function receives. Absent quantities are omitted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Canonical {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure_hpa: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub humidity_pct: Option<f64>,
}

/// What to do with one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Invoke the function with this document.
    Forward(Canonical),
    /// Drop the reading; the reason is logged by the bridge.
    Skip(String),
}

/// Normalizes readings and remembers each device's last accepted values
/// (the state the deadband needs).
#[derive(Debug)]
pub struct Normalizer {
    config: Config,
    last: HashMap<String, PerQuantity<Option<f64>>>,
}

impl Normalizer {
    pub fn new(config: Config) -> Self {
        Normalizer {
            config,
            last: HashMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of devices whose last values are remembered.
    pub fn remembered_devices(&self) -> usize {
        self.last.len()
    }

    /// Runs one payload through the pipeline. `Err` rejects the reading
    /// (the bridge dead-letters it); nothing is remembered then.
    pub fn normalize(&mut self, payload: &[u8], captures: &[String]) -> Result<Verdict, String> {
        let raw = RawReading::parse(payload)?;
        let device = resolve_device(raw.device.as_deref(), captures, self.config.device_capture)?;

        let mut values: PerQuantity<Option<f64>> = PerQuantity::default();
        for quantity in Quantity::ALL {
            let Some((value, unit)) = raw.values.get(quantity) else {
                continue;
            };
            let converted = quantity.to_canonical(*value, unit.as_deref())?;
            let cal = self.config.calibration(&device, quantity);
            let calibrated = round(converted * cal.scale + cal.offset, self.config.decimals);
            let range = self.config.ranges.get(quantity);
            if !(range.min..=range.max).contains(&calibrated) {
                return Err(format!(
                    "{} {calibrated} {} out of range [{}, {}] for device {device}",
                    quantity.name(),
                    quantity.unit(),
                    range.min,
                    range.max
                ));
            }
            *values.get_mut(quantity) = Some(calibrated);
        }

        if let Some(reason) = self.inside_deadband(&device, &values) {
            return Ok(Verdict::Skip(reason));
        }
        self.remember(&device, &values);

        Ok(Verdict::Forward(Canonical {
            device,
            ts: raw.ts,
            temperature_c: values.temperature,
            pressure_hpa: values.pressure,
            humidity_pct: values.humidity,
        }))
    }

    /// `Some(reason)` when every quantity in `values` is within its
    /// deadband of the device's last accepted value. A quantity without a
    /// deadband (0) or without a last value always counts as changed.
    fn inside_deadband(&self, device: &str, values: &PerQuantity<Option<f64>>) -> Option<String> {
        let last = self.last.get(device)?;
        let mut within = Vec::new();
        for quantity in Quantity::ALL {
            let Some(value) = values.get(quantity) else {
                continue;
            };
            let band = *self.config.deadband.get(quantity);
            match last.get(quantity) {
                Some(previous) if band > 0.0 && (value - previous).abs() < band => {
                    within.push(format!(
                        "{} {value} within {band} of {previous}",
                        quantity.name()
                    ));
                }
                _ => return None,
            }
        }
        Some(format!(
            "inside deadband: device {device}: {}",
            within.join(", ")
        ))
    }

    fn remember(&mut self, device: &str, values: &PerQuantity<Option<f64>>) {
        if !self.last.contains_key(device) && self.last.len() >= self.config.max_devices {
            fxbridge_plugin::log(
                fxbridge_plugin::Level::Warn,
                &format!(
                    "sensor-normalize: max_devices ({}) reached; no deadband for device {device}",
                    self.config.max_devices
                ),
            );
            return;
        }
        let last = self.last.entry(device.to_string()).or_default();
        for quantity in Quantity::ALL {
            if let Some(value) = values.get(quantity) {
                *last.get_mut(quantity) = Some(*value);
            }
        }
    }
}

/// Rounds to `decimals` places (half away from zero).
fn round(value: f64, decimals: u32) -> f64 {
    let factor = 10f64.powi(decimals as i32);
    (value * factor).round() / factor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalizer(config: &str) -> Normalizer {
        Normalizer::new(Config::from_json(config).unwrap())
    }

    fn forward(verdict: Verdict) -> Canonical {
        match verdict {
            Verdict::Forward(doc) => doc,
            Verdict::Skip(reason) => panic!("unexpected skip: {reason}"),
        }
    }

    #[test]
    fn fahrenheit_becomes_canonical_celsius_document() {
        let mut n = normalizer("null");
        let doc = forward(
            n.normalize(
                br#"{"device":"dev-1","temp":98.6,"unit":"F","ts":1732600000}"#,
                &[],
            )
            .unwrap(),
        );
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"device":"dev-1","ts":1732600000,"temperature_c":37.0}"#
        );
    }

    #[test]
    fn all_quantities_convert_and_device_comes_from_capture() {
        let mut n = normalizer("null");
        let doc = forward(
            n.normalize(
                br#"{"temp":293.15,"unit":"K","pressure":101325,"pressure_unit":"Pa","humidity":0.5,"humidity_unit":"fraction"}"#,
                &["dev-2".to_string()],
            )
            .unwrap(),
        );
        assert_eq!(doc.device, "dev-2");
        assert_eq!(doc.temperature_c, Some(20.0));
        assert_eq!(doc.pressure_hpa, Some(1013.25));
        assert_eq!(doc.humidity_pct, Some(50.0));
        assert_eq!(doc.ts, None);
    }

    #[test]
    fn calibration_is_per_device_and_after_conversion() {
        let mut n = normalizer(
            r#"{"device_calibration": {"dev-1": {"temperature": {"offset": -0.5, "scale": 2}}}}"#,
        );
        let doc = forward(
            n.normalize(br#"{"device":"dev-1","temp":50,"unit":"F"}"#, &[])
                .unwrap(),
        );
        assert_eq!(doc.temperature_c, Some(19.5)); // 10 °C * 2 - 0.5
        let doc = forward(
            n.normalize(br#"{"device":"dev-3","temp":50,"unit":"F"}"#, &[])
                .unwrap(),
        );
        assert_eq!(doc.temperature_c, Some(10.0));
    }

    #[test]
    fn out_of_range_is_rejected_after_calibration_and_not_remembered() {
        let mut n = normalizer(
            r#"{"ranges": {"temperature": {"min": -20, "max": 60}},
                "device_calibration": {"d": {"temperature": {"offset": 5}}}}"#,
        );
        let err = n
            .normalize(br#"{"device":"d","temp":58}"#, &[])
            .unwrap_err();
        assert_eq!(err, "temperature 63 °C out of range [-20, 60] for device d");
        assert_eq!(n.remembered_devices(), 0);
        let err = n
            .normalize(br#"{"device":"d","humidity":101}"#, &[])
            .unwrap_err();
        assert!(
            err.starts_with("humidity 101 % out of range [0, 100]"),
            "{err}"
        );
        // Bounds are inclusive.
        forward(n.normalize(br#"{"device":"d","temp":55}"#, &[]).unwrap());
    }

    #[test]
    fn deadband_skips_small_changes_relative_to_last_accepted() {
        let mut n = normalizer(r#"{"deadband": {"temperature": 0.5}}"#);
        let msg = |t: f64| format!(r#"{{"device":"d","temp":{t}}}"#);
        forward(n.normalize(msg(20.0).as_bytes(), &[]).unwrap());
        match n.normalize(msg(20.3).as_bytes(), &[]).unwrap() {
            Verdict::Skip(reason) => assert_eq!(
                reason,
                "inside deadband: device d: temperature 20.3 within 0.5 of 20"
            ),
            other => panic!("expected skip, got {other:?}"),
        }
        // Compared with the last *accepted* value (20.0), not the skipped 20.3.
        assert!(matches!(
            n.normalize(msg(20.45).as_bytes(), &[]).unwrap(),
            Verdict::Skip(_)
        ));
        assert_eq!(
            forward(n.normalize(msg(19.5).as_bytes(), &[]).unwrap()).temperature_c,
            Some(19.5)
        );
        // Another device has its own memory.
        forward(n.normalize(br#"{"device":"e","temp":19.6}"#, &[]).unwrap());
    }

    #[test]
    fn deadband_needs_every_present_quantity_inside_its_band() {
        let mut n = normalizer(r#"{"deadband": {"temperature": 1, "pressure": 1}}"#);
        forward(
            n.normalize(br#"{"device":"d","temp":20,"pressure":1000}"#, &[])
                .unwrap(),
        );
        assert!(matches!(
            n.normalize(br#"{"device":"d","temp":20.5,"pressure":1000.5}"#, &[])
                .unwrap(),
            Verdict::Skip(_)
        ));
        forward(
            n.normalize(br#"{"device":"d","temp":20.5,"pressure":1002}"#, &[])
                .unwrap(),
        );
        // Humidity has no band and no last value: always forwarded.
        forward(
            n.normalize(br#"{"device":"d","temp":20.5,"humidity":40}"#, &[])
                .unwrap(),
        );
        forward(
            n.normalize(br#"{"device":"d","humidity":40}"#, &[])
                .unwrap(),
        );
    }

    #[test]
    fn max_devices_bounds_memory() {
        let mut n = normalizer(r#"{"deadband": {"temperature": 1}, "max_devices": 1}"#);
        forward(n.normalize(br#"{"device":"a","temp":20}"#, &[]).unwrap());
        forward(n.normalize(br#"{"device":"b","temp":20}"#, &[]).unwrap());
        assert_eq!(n.remembered_devices(), 1);
        // b is not remembered, so its next reading is not deadbanded.
        forward(n.normalize(br#"{"device":"b","temp":20.1}"#, &[]).unwrap());
        assert!(matches!(
            n.normalize(br#"{"device":"a","temp":20.1}"#, &[]).unwrap(),
            Verdict::Skip(_)
        ));
    }

    #[test]
    fn rounding_keeps_configured_decimals() {
        assert_eq!(round(36.999999999, 2), 37.0);
        assert_eq!(round(-1.005, 1), -1.0);
        assert_eq!(round(1013.256, 0), 1013.0);
        let mut n = normalizer(r#"{"decimals": 1}"#);
        let doc = forward(
            n.normalize(br#"{"device":"d","temp":70,"unit":"F"}"#, &[])
                .unwrap(),
        );
        assert_eq!(doc.temperature_c, Some(21.1));
    }
}
