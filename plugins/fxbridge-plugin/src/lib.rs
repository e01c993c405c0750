//! Guest-side helper for writing fxbridge transform plugins in Rust.
//!
//! It generates the bindings for `wit/transform.wit` (package
//! `fxbridge:transform@0.2.0`) once, and turns the WIT's stateless exported
//! functions into a stateful [`Plugin`] trait: the value returned by
//! [`Plugin::configure`] lives inside the component instance and every hook
//! gets `&mut self`.
//!
//! State semantics (decided by the host, restated here because plugins rely
//! on them): the bridge keeps one instance per route and reuses it across
//! messages; calls into one instance are serialized; after any trap the
//! instance is thrown away and a fresh one is created, and `configure` runs
//! exactly once on every fresh instance before its first hook call. So a
//! plugin may keep per-device memory (last values, counters) in `self`, and
//! must expect to lose it after a trap or a bridge restart.
//!
//! A complete plugin (crate type `cdylib`, built with
//! `cargo build --release --target wasm32-wasip2`):
//!
//! ```
//! use fxbridge_plugin::{Message, Plugin, PreAction, Invocation};
//!
//! struct SkipEmpty;
//!
//! impl Plugin for SkipEmpty {
//!     fn configure(_config_json: &str) -> Result<Self, String> {
//!         Ok(SkipEmpty)
//!     }
//!
//!     fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
//!         if msg.payload.is_empty() {
//!             return Ok(PreAction::Skip("empty payload".into()));
//!         }
//!         Ok(PreAction::Invoke(Invocation { input: msg.payload, function: None }))
//!     }
//! }
//!
//! fxbridge_plugin::export_plugin!(SkipEmpty, world: pre_transform);
//! # fn main() {}
//! ```
//!
//! `world:` picks the WIT world and thereby which hooks the component exports:
//! `pre_transform` (before-invoke only), `post_transform` (after-invoke only)
//! or `transform` (both). A hook that is not exported keeps the bridge's own
//! default; the trait's default methods only matter for exported hooks.
//!
//! Outside WebAssembly (native `cargo test`), [`export_plugin!`] expands to
//! nothing and [`log`] prints to stderr, so plugin logic can be unit-tested
//! by calling the trait methods directly.

use std::sync::Mutex;

/// Bindings generated for world `transform` (all interfaces). Plugins do
/// not use them directly: [`export_plugin!`] wires them to a [`Plugin`].
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "fxbridge:transform/transform@0.2.0",
        // Makes the per-interface export macros usable from plugin crates and
        // keeps this crate's own custom section import-only.
        pub_export_macro: true,
        default_bindings_module: "fxbridge_plugin::bindings",
        additional_derives: [PartialEq],
    });
}

/// The encoded component type of each world, emitted into a plugin by
/// [`export_plugin!`] (see build.rs). wit-bindgen could emit it too, but only
/// through one generated world per crate: generating `pre-transform` next to
/// `transform` defines the same `#[macro_export]` per-interface macros twice.
/// So the bindings come from world `transform` alone, and the section that
/// tells the linker the plugin's actual world comes from here.
#[doc(hidden)]
pub mod component_type {
    pub const PRE_TRANSFORM: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pre-transform.component-type"));
    pub const POST_TRANSFORM: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/post-transform.component-type"));
    pub const TRANSFORM: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/transform.component-type"));
}

pub use bindings::fxbridge::transform::host::Level;
pub use bindings::fxbridge::transform::types::{
    Invocation, Message, Outgoing, PreAction, Qos, UserProperty,
};

/// A transform plugin. One value of the implementing type lives in each
/// component instance, created by [`Plugin::configure`].
pub trait Plugin: Sized + Send + 'static {
    /// Builds the plugin from the route's `transform.config` as JSON text
    /// (`"null"` when the route has none). An `Err` fails the message that
    /// needed this instance.
    fn configure(config_json: &str) -> Result<Self, String>;

    /// The pre hook. Default: invoke the route's function with the payload
    /// unchanged.
    fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
        Ok(PreAction::Invoke(Invocation {
            input: msg.payload,
            function: None,
        }))
    }

    /// The post hook, given the function's reply (`Message.Msg`). Default:
    /// publish the reply once to the route's republish topic with the
    /// route's QoS, marked as UTF-8 text.
    fn after_invoke(&mut self, msg: Message, reply: String) -> Result<Vec<Outgoing>, String> {
        let _ = msg;
        let mut out = Outgoing::new(None, reply.into_bytes());
        out.utf8 = true;
        Ok(vec![out])
    }
}

/// Writes a line to the bridge's log, tagged with the route. Outside
/// WebAssembly it prints to stderr instead (for native tests).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::fxbridge::transform::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Where an exported plugin's instance state lives; created by
/// [`export_plugin!`], one per component.
pub struct Slot<P>(Mutex<Option<P>>);

impl<P: Plugin> Slot<P> {
    /// An empty slot (before `configure`).
    pub const fn new() -> Self {
        Slot(Mutex::new(None))
    }

    /// Runs `configure` and stores the plugin, replacing any previous one.
    pub fn configure(&self, config_json: String) -> Result<(), String> {
        let plugin = P::configure(&config_json)?;
        *self.lock() = Some(plugin);
        Ok(())
    }

    /// Runs `hook` on the configured plugin, or fails when the host called a
    /// hook before `configure` (a host bug, reported instead of trapping).
    pub fn with<R>(&self, hook: impl FnOnce(&mut P) -> Result<R, String>) -> Result<R, String> {
        match self.lock().as_mut() {
            Some(plugin) => hook(plugin),
            None => Err("plugin hook called before configure".to_string()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<P>> {
        // A poisoned lock needs a panic, and a panic traps the instance
        // (panic = abort in WebAssembly), so the state is never reused.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<P: Plugin> Default for Slot<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Exports a [`Plugin`] type as the component's implementation of a WIT
/// world: `world: pre_transform`, `world: post_transform` or
/// `world: transform`. Use once per plugin crate, at the crate root.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty, world: transform) => {
        $crate::export_plugin!(@impl $plugin, TRANSFORM, "transform", [before_invoke after_invoke]);
    };
    ($plugin:ty, world: pre_transform) => {
        $crate::export_plugin!(@impl $plugin, PRE_TRANSFORM, "pre-transform", [before_invoke]);
    };
    ($plugin:ty, world: post_transform) => {
        $crate::export_plugin!(@impl $plugin, POST_TRANSFORM, "post-transform", [after_invoke]);
    };
    (@impl $plugin:ty, $world:ident, $world_name:literal, [$($hook:ident)*]) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static SLOT: $crate::Slot<$plugin> = $crate::Slot::new();

            struct Exports;

            impl $crate::bindings::exports::fxbridge::transform::setup::Guest for Exports {
                fn configure(config: String) -> Result<(), String> {
                    SLOT.configure(config)
                }
            }
            $crate::bindings::exports::fxbridge::transform::setup::__export_fxbridge_transform_setup_0_2_0_cabi!(
                Exports with_types_in $crate::bindings::exports::fxbridge::transform::setup
            );

            $( $crate::export_plugin!(@hook $hook, $plugin, SLOT, Exports); )*

            // Tells the linker which world (and so which exports) this
            // component has; see build.rs.
            #[used]
            #[unsafe(link_section = concat!("component-type:fxbridge-plugin:", $world_name))]
            static COMPONENT_TYPE: [u8; $crate::component_type::$world.len()] = {
                let mut bytes = [0u8; $crate::component_type::$world.len()];
                let mut i = 0;
                while i < bytes.len() {
                    bytes[i] = $crate::component_type::$world[i];
                    i += 1;
                }
                bytes
            };
        };
    };
    (@hook before_invoke, $plugin:ty, $slot:ident, $exports:ident) => {
        impl $crate::bindings::exports::fxbridge::transform::before_invoke::Guest for $exports {
            fn transform(msg: $crate::Message) -> Result<$crate::PreAction, String> {
                $slot.with(|plugin| <$plugin as $crate::Plugin>::before_invoke(plugin, msg))
            }
        }
        $crate::bindings::exports::fxbridge::transform::before_invoke::__export_fxbridge_transform_before_invoke_0_2_0_cabi!(
            $exports with_types_in $crate::bindings::exports::fxbridge::transform::before_invoke
        );
    };
    (@hook after_invoke, $plugin:ty, $slot:ident, $exports:ident) => {
        impl $crate::bindings::exports::fxbridge::transform::after_invoke::Guest for $exports {
            fn transform(
                msg: $crate::Message,
                reply: String,
            ) -> Result<Vec<$crate::Outgoing>, String> {
                $slot.with(|plugin| <$plugin as $crate::Plugin>::after_invoke(plugin, msg, reply))
            }
        }
        $crate::bindings::exports::fxbridge::transform::after_invoke::__export_fxbridge_transform_after_invoke_0_2_0_cabi!(
            $exports with_types_in $crate::bindings::exports::fxbridge::transform::after_invoke
        );
    };
}

/// Helpers for building values in plugin code and native tests.
impl Message {
    /// A message with the given topic and payload and neutral defaults
    /// (route "test", function "echo", QoS 1, no captures).
    pub fn new(topic: &str, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            route: "test".to_string(),
            function: "echo".to_string(),
            topic: topic.to_string(),
            captures: Vec::new(),
            payload: payload.into(),
            qos: Qos::AtLeastOnce,
            retain: false,
            user_properties: Vec::new(),
            content_type: None,
            utf8: false,
            response_topic: None,
            correlation_data: None,
        }
    }
}

impl Outgoing {
    /// An outgoing message to `topic` (`None` = the route's republish
    /// topic) with the route's QoS, not retained, without user properties.
    pub fn new(topic: Option<String>, payload: impl Into<Vec<u8>>) -> Self {
        Outgoing {
            topic,
            payload: payload.into(),
            qos: None,
            retain: false,
            user_properties: Vec::new(),
            content_type: None,
            utf8: false,
            correlation_data: None,
        }
    }

    /// Marks the payload as UTF-8 text with an MQTT 5 content type.
    pub fn text(mut self, content_type: &str) -> Self {
        self.content_type = Some(content_type.to_string());
        self.utf8 = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        seen: u32,
    }

    impl Plugin for Counter {
        fn configure(config_json: &str) -> Result<Self, String> {
            match config_json {
                "null" => Ok(Counter { seen: 0 }),
                other => Err(format!("unexpected config {other}")),
            }
        }

        fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
            self.seen += 1;
            Ok(PreAction::Invoke(Invocation {
                input: format!("{}:{}", self.seen, msg.topic).into_bytes(),
                function: None,
            }))
        }
    }

    #[test]
    fn slot_keeps_state_between_calls_and_reconfigure_resets_it() {
        let slot: Slot<Counter> = Slot::new();
        slot.configure("null".into()).unwrap();
        let first = slot
            .with(|p| p.before_invoke(Message::new("a", "")))
            .unwrap();
        let second = slot
            .with(|p| p.before_invoke(Message::new("b", "")))
            .unwrap();
        let input = |action: PreAction| match action {
            PreAction::Invoke(inv) => String::from_utf8(inv.input).unwrap(),
            PreAction::Skip(reason) => panic!("unexpected skip {reason}"),
        };
        assert_eq!(input(first), "1:a");
        assert_eq!(input(second), "2:b");
        slot.configure("null".into()).unwrap();
        let after_reset = slot
            .with(|p| p.before_invoke(Message::new("c", "")))
            .unwrap();
        assert_eq!(input(after_reset), "1:c");
    }

    #[test]
    fn hook_before_configure_is_an_error_and_configure_errors_propagate() {
        let slot: Slot<Counter> = Slot::new();
        let err = slot
            .with(|p| p.before_invoke(Message::new("a", "")))
            .unwrap_err();
        assert!(err.contains("before configure"), "{err}");
        let err = slot.configure("{\"x\":1}".into()).unwrap_err();
        assert!(err.contains("unexpected config"), "{err}");
    }

    #[test]
    fn default_after_invoke_publishes_reply_to_route_default() {
        let mut counter = Counter { seen: 0 };
        let out = counter
            .after_invoke(Message::new("t", "in"), "reply".into())
            .unwrap();
        assert_eq!(out, vec![Outgoing::new(None, "reply")]);
    }
}
