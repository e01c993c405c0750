//! __NAME__: an fxbridge transform plugin (WIT world `transform`), generated
//! by `fxbridge plugin new`. Change it freely; `cases.yaml` says what it does.
//!
//! - Pre hook (`before-invoke`): skips a message with an empty payload;
//!   otherwise invokes the route's function, or the config's `function`, with
//!   the payload unchanged.
//! - Post hook (`after-invoke`): publishes the function's reply once to the
//!   route's republish topic as UTF-8 text, with the MQTT 5 user property
//!   `plugin=__NAME__`; an empty reply publishes nothing.
//!
//! Config (`transform.config` of the route in bridge.yaml, optional):
//! `{"function": "other-fn"}` invokes `other-fn` instead of the route's
//! function.
//!
//! Return `Err(reason)` for a bad message or config: the message goes to the
//! route's dead-letter topic with the reason. Do not panic on input: a panic
//! traps, and the bridge replaces the instance.

use std::sync::{Mutex, MutexGuard};

use exports::fxbridge::transform::{after_invoke, before_invoke, setup};
use fxbridge::transform::host::{log, Level};
use fxbridge::transform::types::{Invocation, Message, Outgoing, PreAction};

wit_bindgen::generate!({
    path: "wit",
    world: "fxbridge:transform/transform@0.2.0",
});

const NAME: &str = "__NAME__";

/// The route's config.
#[derive(Debug, Default, PartialEq)]
struct Config {
    /// Function to invoke instead of the route's.
    function: Option<String>,
}

/// Parses the config JSON (`null` when the route has none).
fn parse_config(json: &str) -> Result<Config, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
    let mut config = Config::default();
    match value {
        serde_json::Value::Null => {}
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("function", serde_json::Value::String(f)) if !f.is_empty() => {
                        config.function = Some(f);
                    }
                    ("function", _) => {
                        return Err("invalid config: function must be a non-empty string".into())
                    }
                    _ => return Err(format!("invalid config: unknown key {key}")),
                }
            }
        }
        _ => return Err("invalid config: expected an object".into()),
    }
    Ok(config)
}

/// The instance's state: set by `configure`, which the bridge calls once on
/// every new instance before its first hook call. State kept here lasts as
/// long as the instance (until a trap, a reload or a restart).
static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config() -> MutexGuard<'static, Option<Config>> {
    // A poisoned lock needs a panic, and a panic traps the instance.
    CONFIG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Plugin;

impl setup::Guest for Plugin {
    fn configure(config_json: String) -> Result<(), String> {
        *config() = Some(parse_config(&config_json)?);
        Ok(())
    }
}

impl before_invoke::Guest for Plugin {
    fn transform(msg: Message) -> Result<PreAction, String> {
        if msg.payload.is_empty() {
            return Ok(PreAction::Skip("empty payload".to_string()));
        }
        let function = match config().as_ref() {
            Some(config) => config.function.clone(),
            None => return Err("plugin hook called before configure".to_string()),
        };
        log(
            Level::Debug,
            &format!("{NAME}: {} bytes from {}", msg.payload.len(), msg.topic),
        );
        Ok(PreAction::Invoke(Invocation {
            input: msg.payload,
            function,
        }))
    }
}

impl after_invoke::Guest for Plugin {
    fn transform(msg: Message, reply: String) -> Result<Vec<Outgoing>, String> {
        if reply.is_empty() {
            log(
                Level::Info,
                &format!("{NAME}: empty reply for {}, nothing published", msg.topic),
            );
            return Ok(Vec::new());
        }
        Ok(vec![Outgoing {
            topic: None, // the route's republish topic
            payload: reply.into_bytes(),
            qos: None, // the route's republish QoS
            retain: false,
            user_properties: vec![("plugin".to_string(), NAME.to_string())],
            content_type: None,
            utf8: true,
            // On the reply to an MQTT 5 request, None keeps the request's.
            correlation_data: None,
        }])
    }
}

export!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_optional_and_checked() {
        assert_eq!(parse_config("null"), Ok(Config::default()));
        assert_eq!(
            parse_config(r#"{"function": "other-fn"}"#),
            Ok(Config {
                function: Some("other-fn".to_string())
            })
        );
        assert_eq!(
            parse_config(r#"{"fucntion": "x"}"#),
            Err("invalid config: unknown key fucntion".to_string())
        );
        assert!(parse_config(r#"{"function": 7}"#).is_err());
        assert!(parse_config("[]").is_err());
    }
}
