//! The post hook: wraps the function's reply in a per-device result
//! envelope and picks its topic.

use serde::Serialize;
use serde_json::value::RawValue;

use fxbridge_plugin::{Message, Outgoing, Qos};

use crate::config::Config;
use crate::reading::resolve_device;

/// `{"device": ..., "function": ..., "result": ...}`.
#[derive(Serialize)]
struct Envelope<'a> {
    device: &'a str,
    function: &'a str,
    result: Result_<'a>,
}

/// The reply verbatim when it is JSON, else as a JSON string.
#[derive(Serialize)]
#[serde(untagged)]
enum Result_<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

/// Builds the one outgoing message for `reply` to `msg`.
pub fn wrap(config: &Config, msg: &Message, reply: &str) -> Result<Outgoing, String> {
    let device = device_of(config, msg)?;
    let result = match serde_json::from_str::<&RawValue>(reply) {
        Ok(json) => Result_::Json(json),
        Err(_) => Result_::Text(reply),
    };
    let envelope = Envelope {
        device: &device,
        function: &msg.function,
        result,
    };
    let payload =
        serde_json::to_vec(&envelope).map_err(|e| format!("cannot encode result envelope: {e}"))?;
    Ok(Outgoing {
        topic: config
            .reply_topic
            .as_ref()
            .map(|t| t.render(&device, &msg.route, &msg.function)),
        payload,
        qos: config.reply_qos.map(|q| match q {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            _ => Qos::ExactlyOnce,
        }),
        retain: false,
        user_properties: Vec::new(),
        content_type: Some("application/json".to_string()),
        utf8: true,
        correlation_data: None,
    })
}

/// The device of the original message: its payload's `device` field when
/// the payload is a JSON object, and/or the configured topic capture.
fn device_of(config: &Config, msg: &Message) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct DeviceOnly {
        device: Option<String>,
    }
    let payload_device = serde_json::from_slice::<DeviceOnly>(&msg.payload)
        .ok()
        .and_then(|d| d.device);
    resolve_device(
        payload_device.as_deref(),
        &msg.captures,
        config.device_capture,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &str, captures: &[&str]) -> Message {
        let mut msg = Message::new("sensors/x/temp", payload);
        msg.route = "sensors".into();
        msg.function = "normalize".into();
        msg.captures = captures.iter().map(|c| c.to_string()).collect();
        msg
    }

    #[test]
    fn json_reply_is_embedded_verbatim_and_topic_uses_device() {
        let config =
            Config::from_json(r#"{"reply_topic": "results/{device}", "reply_qos": 2}"#).unwrap();
        let out = wrap(
            &config,
            &message(r#"{"device":"dev-1","temp":1}"#, &[]),
            r#" {"z":1,"a":[1.50,2]} "#,
        )
        .unwrap();
        assert_eq!(out.topic.as_deref(), Some("results/dev-1"));
        assert_eq!(out.qos, Some(Qos::ExactlyOnce));
        assert_eq!(
            String::from_utf8(out.payload).unwrap(),
            r#"{"device":"dev-1","function":"normalize","result":{"z":1,"a":[1.50,2]}}"#
        );
    }

    #[test]
    fn text_reply_becomes_a_string_and_no_template_means_route_topic() {
        let config = Config::from_json("null").unwrap();
        let out = wrap(&config, &message("not json", &["dev-4"]), "ok \"done\"").unwrap();
        assert_eq!(out.topic, None);
        assert_eq!(out.qos, None);
        assert_eq!(
            String::from_utf8(out.payload).unwrap(),
            r#"{"device":"dev-4","function":"normalize","result":"ok \"done\""}"#
        );
    }

    #[test]
    fn missing_or_conflicting_device_is_an_error() {
        let config = Config::from_json("null").unwrap();
        let err = wrap(&config, &message(r#"{"temp":1}"#, &[]), "1").unwrap_err();
        assert!(err.contains("no device id"), "{err}");
        let err = wrap(&config, &message(r#"{"device":"a"}"#, &["b"]), "1").unwrap_err();
        assert!(err.contains("device mismatch"), "{err}");
    }
}
