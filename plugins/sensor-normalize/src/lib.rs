//! sensor-normalize: an fxbridge transform for sensor readings.
//!
//! Pre hook: turns a device's JSON reading into a canonical document (see
//! [`normalize`]); post hook: wraps the function's reply in a per-device
//! result envelope (see [`envelope`]). The schema and config are described
//! in this crate's README.md. The logic lives in plain modules so it is
//! unit-tested natively; this file only connects it to the plugin trait.

pub mod config;
pub mod envelope;
pub mod normalize;
pub mod quantity;
pub mod reading;

use fxbridge_plugin::{Invocation, Message, Outgoing, Plugin, PreAction};

use crate::config::Config;
use crate::normalize::{Normalizer, Verdict};

/// The plugin value: the normalizer with its per-device memory.
pub struct SensorNormalize {
    normalizer: Normalizer,
}

impl Plugin for SensorNormalize {
    fn configure(config_json: &str) -> Result<Self, String> {
        Ok(SensorNormalize {
            normalizer: Normalizer::new(Config::from_json(config_json)?),
        })
    }

    fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
        match self.normalizer.normalize(&msg.payload, &msg.captures)? {
            Verdict::Forward(doc) => Ok(PreAction::Invoke(Invocation {
                input: serde_json::to_vec(&doc)
                    .map_err(|e| format!("cannot encode canonical reading: {e}"))?,
                function: None,
            })),
            Verdict::Skip(reason) => Ok(PreAction::Skip(reason)),
        }
    }

    fn after_invoke(&mut self, msg: Message, reply: String) -> Result<Vec<Outgoing>, String> {
        Ok(vec![envelope::wrap(
            self.normalizer.config(),
            &msg,
            &reply,
        )?])
    }
}

fxbridge_plugin::export_plugin!(SensorNormalize, world: transform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_connect_normalizer_and_envelope() {
        let mut plugin = SensorNormalize::configure(
            r#"{"reply_topic": "results/{device}", "deadband": {"temperature": 0.5}}"#,
        )
        .unwrap();
        let mut msg = Message::new("sensors/dev-1/temp", r#"{"temp":98.6,"unit":"F"}"#);
        msg.captures = vec!["dev-1".into()];
        assert_eq!(
            plugin.before_invoke(msg.clone()).unwrap(),
            PreAction::Invoke(Invocation {
                input: br#"{"device":"dev-1","temperature_c":37.0}"#.to_vec(),
                function: None,
            })
        );
        assert!(matches!(
            plugin.before_invoke(msg.clone()).unwrap(),
            PreAction::Skip(reason) if reason.starts_with("inside deadband")
        ));
        let out = plugin.after_invoke(msg, "fever".into()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic.as_deref(), Some("results/dev-1"));
        assert_eq!(
            out[0].payload,
            br#"{"device":"dev-1","function":"echo","result":"fever"}"#.to_vec()
        );
    }
}
