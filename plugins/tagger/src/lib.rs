//! A test plugin for hot reload: both hooks stamp the message with the version
//! the component was built as (`v1`, or `v2` with the `v2` feature), so a test
//! can tell that one message saw one whole version.
//!
//! Pre hook: the input is `pre=<version>;` followed by the payload. Post hook:
//! one message, `<reply>;post=<version>`, to the route's topic. A message whose
//! pre and post hooks came from different versions shows it in its payload.

use fxbridge_plugin::{Invocation, Message, Outgoing, Plugin, PreAction};

/// The version baked into this build.
pub const VERSION: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };

pub struct Tagger;

impl Plugin for Tagger {
    fn configure(_config_json: &str) -> Result<Self, String> {
        Ok(Tagger)
    }

    fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
        let mut input = format!("pre={VERSION};").into_bytes();
        input.extend_from_slice(&msg.payload);
        Ok(PreAction::Invoke(Invocation {
            input,
            function: None,
        }))
    }

    fn after_invoke(&mut self, _msg: Message, reply: String) -> Result<Vec<Outgoing>, String> {
        Ok(vec![Outgoing::new(None, format!("{reply};post={VERSION}"))])
    }
}

fxbridge_plugin::export_plugin!(Tagger, world: transform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_hooks_stamp_the_same_version() {
        let mut t = Tagger::configure("null").unwrap();
        let PreAction::Invoke(inv) = t.before_invoke(Message::new("t", "7")).unwrap() else {
            panic!("expected invoke");
        };
        assert_eq!(inv.input, format!("pre={VERSION};7").into_bytes());
        let out = t
            .after_invoke(Message::new("t", "7"), format!("pre={VERSION};7"))
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, format!("pre={VERSION};7;post={VERSION}").into_bytes());
    }
}
