//! The smallest useful fxbridge plugin, meant to be copied: a pre hook that
//! skips empty payloads and can send the rest to another function.
//!
//! Route config (`transform.config` in bridge.yaml, all optional):
//! `{"function": "other-fn"}` invokes `other-fn` instead of the route's
//! function. The plugin counts the messages it let through, to show that
//! state lives in the plugin value between messages of one instance.

use fxbridge_plugin::{log, Invocation, Level, Message, Plugin, PreAction};
use serde::Deserialize;

/// The route's `transform.config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Function to invoke instead of the route's.
    function: Option<String>,
}

/// One value per component instance; lives until the instance is replaced.
pub struct Template {
    config: Config,
    passed: u64,
}

impl Plugin for Template {
    fn configure(config_json: &str) -> Result<Self, String> {
        // `null` (no config on the route) deserializes to `None`.
        let config: Option<Config> =
            serde_json::from_str(config_json).map_err(|e| format!("invalid config: {e}"))?;
        Ok(Template {
            config: config.unwrap_or_default(),
            passed: 0,
        })
    }

    fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
        if msg.payload.is_empty() {
            return Ok(PreAction::Skip("empty payload".to_string()));
        }
        self.passed += 1;
        log(
            Level::Debug,
            &format!("message {} on {} passed", self.passed, msg.topic),
        );
        Ok(PreAction::Invoke(Invocation {
            input: msg.payload,
            function: self.config.function.clone(),
        }))
    }

    // `after_invoke` is not exported by the `pre_transform` world below; with
    // `world: transform` the trait's default (publish the reply once to the
    // route's topic) would apply unless overridden here.
}

fxbridge_plugin::export_plugin!(Template, world: pre_transform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_empty_and_overrides_function_from_config() {
        let mut plugin = Template::configure(r#"{"function": "other"}"#).unwrap();
        assert_eq!(
            plugin.before_invoke(Message::new("t", "")).unwrap(),
            PreAction::Skip("empty payload".to_string())
        );
        assert_eq!(
            plugin.before_invoke(Message::new("t", "x")).unwrap(),
            PreAction::Invoke(Invocation {
                input: b"x".to_vec(),
                function: Some("other".to_string()),
            })
        );
        assert_eq!(plugin.passed, 1);
    }

    #[test]
    fn null_config_is_accepted_and_unknown_keys_are_not() {
        assert!(Template::configure("null")
            .unwrap()
            .config
            .function
            .is_none());
        let err = Template::configure(r#"{"fucntion": "x"}"#).err().unwrap();
        assert!(err.contains("unknown field"), "{err}");
    }
}
