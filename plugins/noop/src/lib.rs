//! A transform that does nothing: the pre hook invokes with the payload as
//! it came, the post hook publishes the reply once to the route's default
//! topic. It exists to measure the bridge's per-call overhead of running a
//! component (instance call, lifting and lowering of the message), so it
//! does no work of its own, not even parse its config.

use fxbridge_plugin::{Invocation, Message, Outgoing, Plugin, PreAction};

/// The stateless pass-through plugin.
pub struct Noop;

impl Plugin for Noop {
    fn configure(_config_json: &str) -> Result<Self, String> {
        Ok(Noop)
    }

    fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
        Ok(PreAction::Invoke(Invocation {
            input: msg.payload,
            function: None,
        }))
    }

    fn after_invoke(&mut self, _msg: Message, reply: String) -> Result<Vec<Outgoing>, String> {
        Ok(vec![Outgoing::new(None, reply)])
    }
}

fxbridge_plugin::export_plugin!(Noop, world: transform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_payload_and_reply_through_unchanged() {
        let mut noop = Noop::configure("null").unwrap();
        let payload = vec![0u8, 159, 146, 150, 255];
        match noop
            .before_invoke(Message::new("a/b", payload.clone()))
            .unwrap()
        {
            PreAction::Invoke(inv) => {
                assert_eq!(inv.input, payload);
                assert_eq!(inv.function, None);
            }
            PreAction::Skip(reason) => panic!("unexpected skip: {reason}"),
        }
        let out = noop
            .after_invoke(Message::new("a/b", payload), "{\"ok\":true}".into())
            .unwrap();
        assert_eq!(out, vec![Outgoing::new(None, "{\"ok\":true}")]);
    }
}
