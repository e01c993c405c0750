//! Tools for plugin authors, built on the runtime but not part of it:
//! `fxbridge plugin test` ([`cases`]: a plugin against a file of cases in the
//! production sandbox), `fxbridge plugin inspect` ([`inspect`]: what a
//! component exports and imports) and `fxbridge plugin new` ([`scaffold`]: a
//! plugin skeleton to start from). The bridge itself never calls them.

pub mod cases;
pub mod inspect;
pub mod scaffold;
