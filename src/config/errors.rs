//! Errors in `bridge.yaml`, and the [`Collector`] that gathers every one of
//! them with its line and column instead of stopping at the first.

use std::fmt;

use serde::de::DeserializeOwned;

use super::locate::{self, Positions};

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the setting, e.g. `routes[1].qos`; empty for the whole file.
    pub path: String,
    pub location: Option<locate::Location>,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file as named by the user.
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(loc) = e.location {
                write!(f, ":{}:{}", loc.line, loc.col)?;
            }
            if e.path.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Collects errors with their locations while the file is checked.
pub(super) struct Collector<'a> {
    pub(super) positions: &'a Positions,
    pub(super) errors: Vec<ConfigError>,
}

impl Collector<'_> {
    pub(super) fn at(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        // Whole-file problems have no single line to point at.
        let location = if path.is_empty() {
            None
        } else {
            self.positions.nearest(&path)
        };
        self.errors.push(ConfigError {
            path,
            location,
            message: message.into(),
        });
    }

    /// Deserialises one section, recording every error it can find.
    ///
    /// serde stops at the first error, so after each one the offending key is
    /// removed and the section is tried again (up to a bound): an unknown field,
    /// a value of the wrong type, and a bad value elsewhere in the same route are
    /// all reported in one pass. The section is returned (with defaults where keys
    /// were removed) so that the semantic checks can run on it too; the file is
    /// rejected anyway because errors were recorded.
    pub(super) fn section<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        mut value: serde_yaml::Value,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..32 {
            let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut segments: Vec<PathSegment> = err
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => {
                        Some(PathSegment::Key(key.clone()))
                    }
                    _ => None,
                })
                .collect();
            let message = err.into_inner().to_string();
            // serde names an unknown field only in its message.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
            {
                if segments.last() != Some(&PathSegment::Key(field.to_string())) {
                    segments.push(PathSegment::Key(field.to_string()));
                }
            }
            let path = render_path(prefix, &segments);
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                // A key removed after an earlier error is not missing for the user.
                let missing = render_path(&path, &[PathSegment::Key(field.to_string())]);
                if !removed.contains(&missing) {
                    self.at(path, message);
                }
                return None;
            }
            let location = if message.starts_with("unknown field") {
                self.positions.key(&path)
            } else {
                self.positions.nearest(&path)
            };
            self.errors.push(ConfigError {
                path: path.clone(),
                location,
                message,
            });
            if segments.is_empty() || !remove_at(&mut value, &segments) {
                return None;
            }
            removed.push(path);
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Key(String),
    Index(usize),
}

fn render_path(prefix: &str, segments: &[PathSegment]) -> String {
    let mut out = prefix.to_string();
    for s in segments {
        match s {
            PathSegment::Key(k) if out.is_empty() => out.push_str(k),
            PathSegment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes the node at `path` from `value`; false if there is none.
fn remove_at(value: &mut serde_yaml::Value, path: &[PathSegment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (PathSegment::Key(k), serde_yaml::Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(n) => n,
                None => return false,
            },
            (PathSegment::Index(i), serde_yaml::Value::Sequence(s)) => match s.get_mut(*i) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (PathSegment::Key(k), serde_yaml::Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (PathSegment::Index(i), serde_yaml::Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}
