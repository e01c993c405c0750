//! Tools for plugin authors, built on the runtime but not part of it:
//! `fxbridge plugin test` ([`cases`]: a plugin against a file of cases in the
//! production sandbox) and `fxbridge plugin inspect` ([`inspect`]: what a
//! component exports and imports). The bridge itself never calls them.

pub mod cases;
pub mod inspect;
