//! Parsing a device's JSON reading and resolving which device sent it.

use serde_json::{Map, Value};

use crate::quantity::{PerQuantity, Quantity};

/// A reading as the device sent it, before conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct RawReading {
    /// The `device` field, if present.
    pub device: Option<String>,
    /// The `ts` field, passed through unchanged (number or string).
    pub ts: Option<Value>,
    /// Each present quantity with its unit (`None` = canonical unit).
    pub values: PerQuantity<Option<(f64, Option<String>)>>,
}

/// Field names of each quantity's value and unit; the first name that is
/// present wins, two present names are an error.
fn field_names(quantity: Quantity) -> (&'static [&'static str], &'static [&'static str]) {
    match quantity {
        Quantity::Temperature => (&["temp", "temperature"], &["unit", "temp_unit"]),
        Quantity::Pressure => (&["pressure"], &["pressure_unit"]),
        Quantity::Humidity => (&["humidity"], &["humidity_unit"]),
    }
}

impl RawReading {
    /// Parses a payload; it must be a JSON object with at least one
    /// quantity. Unknown fields are ignored.
    pub fn parse(payload: &[u8]) -> Result<RawReading, String> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("payload is not a JSON object".to_string());
        };
        let device = match fields.get("device") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(other) => return Err(format!("\"device\" must be a string, got {other}")),
        };
        let ts = match fields.get("ts") {
            None | Some(Value::Null) => None,
            Some(ts @ (Value::Number(_) | Value::String(_))) => Some(ts.clone()),
            Some(other) => return Err(format!("\"ts\" must be a number or a string, got {other}")),
        };
        let mut values = PerQuantity::default();
        for quantity in Quantity::ALL {
            let (value_names, unit_names) = field_names(quantity);
            let Some((name, value)) = one_of(&fields, value_names)? else {
                continue;
            };
            let Some(number) = value.as_f64() else {
                return Err(format!("\"{name}\" must be a number, got {value}"));
            };
            let unit = match one_of(&fields, unit_names)? {
                None | Some((_, Value::Null)) => None,
                Some((_, Value::String(unit))) => Some(unit.clone()),
                Some((unit_name, other)) => {
                    return Err(format!("\"{unit_name}\" must be a string, got {other}"))
                }
            };
            *values.get_mut(quantity) = Some((number, unit));
        }
        if Quantity::ALL.iter().all(|&q| values.get(q).is_none()) {
            return Err("reading has no temp, pressure or humidity field".to_string());
        }
        Ok(RawReading { device, ts, values })
    }
}

/// The one field among `names` that is present (and not null).
fn one_of<'a>(
    fields: &'a Map<String, Value>,
    names: &[&'static str],
) -> Result<Option<(&'static str, &'a Value)>, String> {
    let mut found = None;
    for &name in names {
        match fields.get(name) {
            None | Some(Value::Null) => {}
            Some(value) => {
                if let Some((first, _)) = found {
                    return Err(format!("both \"{first}\" and \"{name}\" are present"));
                }
                found = Some((name, value));
            }
        }
    }
    Ok(found)
}

/// The device id: from the payload's `device` field and/or the topic
/// capture at `capture_index`. When both are present they must agree. The id
/// ends up in topics, so it must be a single non-empty topic level without
/// wildcards or control characters, at most 128 bytes.
pub fn resolve_device(
    payload_device: Option<&str>,
    captures: &[String],
    capture_index: usize,
) -> Result<String, String> {
    let captured = captures.get(capture_index).map(String::as_str);
    let device = match (payload_device, captured) {
        (Some(p), Some(c)) if p != c => {
            return Err(format!(
                "device mismatch: payload says {p:?}, topic says {c:?}"
            ))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            return Err(format!(
            "no device id: payload has no \"device\" and the topic has no capture {capture_index}"
        ))
        }
    };
    if device.is_empty()
        || device.len() > 128
        || device.contains(['/', '+', '#'])
        || device.chars().any(char::is_control)
    {
        return Err(format!("invalid device id {device:?}"));
    }
    Ok(device.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_units_device_and_ts() {
        let r = RawReading::parse(
            br#"{"device":"dev-1","temp":98.6,"unit":"F","pressure":101.3,"pressure_unit":"kPa","humidity":40,"ts":1732600000,"rssi":-70}"#,
        )
        .unwrap();
        assert_eq!(r.device.as_deref(), Some("dev-1"));
        assert_eq!(r.ts, Some(serde_json::json!(1732600000)));
        assert_eq!(r.values.temperature, Some((98.6, Some("F".to_string()))));
        assert_eq!(r.values.pressure, Some((101.3, Some("kPa".to_string()))));
        assert_eq!(r.values.humidity, Some((40.0, None)));
    }

    #[test]
    fn temperature_alias_and_temp_unit() {
        let r = RawReading::parse(br#"{"temperature":300,"temp_unit":"K"}"#).unwrap();
        assert_eq!(r.values.temperature, Some((300.0, Some("K".to_string()))));
        assert_eq!(r.device, None);
        assert_eq!(r.ts, None);
    }

    #[test]
    fn malformed_readings_are_explained() {
        for (payload, needle) in [
            (&b"\xff\xfe"[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"device":"d"}"#, "no temp, pressure or humidity"),
            (br#"{"temp":"hot"}"#, "\"temp\" must be a number"),
            (
                br#"{"temp":1,"temperature":2}"#,
                "both \"temp\" and \"temperature\"",
            ),
            (br#"{"temp":1,"unit":5}"#, "\"unit\" must be a string"),
            (br#"{"temp":1,"device":7}"#, "\"device\" must be a string"),
            (br#"{"temp":1,"ts":[1]}"#, "\"ts\" must be"),
        ] {
            let err = RawReading::parse(payload).unwrap_err();
            assert!(err.contains(needle), "{payload:?}: {err}");
        }
    }

    #[test]
    fn device_from_payload_or_capture() {
        let caps = vec!["dev-9".to_string()];
        assert_eq!(resolve_device(Some("dev-9"), &caps, 0).unwrap(), "dev-9");
        assert_eq!(resolve_device(None, &caps, 0).unwrap(), "dev-9");
        assert_eq!(resolve_device(Some("dev-1"), &[], 0).unwrap(), "dev-1");
        let err = resolve_device(Some("dev-1"), &caps, 0).unwrap_err();
        assert!(err.contains("device mismatch"), "{err}");
        let err = resolve_device(None, &caps, 1).unwrap_err();
        assert!(err.contains("no capture 1"), "{err}");
        for bad in ["", "a/b", "a+", "#", "a\nb"] {
            let err = resolve_device(Some(bad), &[], 0).unwrap_err();
            assert!(err.contains("invalid device id"), "{bad:?}: {err}");
        }
        assert!(resolve_device(Some(&"x".repeat(129)), &[], 0).is_err());
    }
}
