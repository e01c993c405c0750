//! Where each setting sits in the YAML text, so that errors can name its line.
//!
//! serde_yaml reports a location only for syntax errors, and its `Value` has no
//! positions. This module walks the same text with yaml-rust2's event parser and
//! records the line and column of every key and value under a dotted path such as
//! `routes[1].retry.attempts`, the same path the validator reports.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the YAML text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub col: usize,
}

/// Positions of keys and values by path.
#[derive(Debug, Default)]
pub struct Positions {
    values: HashMap<String, Location>,
    keys: HashMap<String, Location>,
}

impl Positions {
    /// Indexes `text`. A document that yaml-rust2 cannot parse yields an empty
    /// index: errors are then reported without a line rather than not at all.
    pub fn index(text: &str) -> Positions {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Positions::default();
        }
        walker.positions
    }

    /// Location of the value at `path`, or of its key when the value has none.
    pub fn value(&self, path: &str) -> Option<Location> {
        self.values
            .get(path)
            .or_else(|| self.keys.get(path))
            .copied()
    }

    /// Location of the key that names `path` (for "unknown field" errors).
    pub fn key(&self, path: &str) -> Option<Location> {
        self.keys
            .get(path)
            .or_else(|| self.values.get(path))
            .copied()
    }

    /// Location of `path`, or of its nearest ancestor that has one.
    pub fn nearest(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(loc) = self.value(p) {
                return Some(loc);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next; `None` while a key is expected.
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: Positions,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn location(mark: Marker) -> Location {
    Location {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

impl Walker {
    /// Handles the start of a node; returns its path when it is a value (not a key).
    fn node(&mut self, ev: &Event, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    let name = match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => "?".to_string(),
                    };
                    self.positions
                        .keys
                        .insert(join(path, &name), location(mark));
                    *key = Some(name);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match &ev {
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(path) = self.node(&ev, mark) {
                    self.positions.values.entry(path).or_insert(location(mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a key has no useful name; it still nests.
                let path = self.node(&ev, mark).unwrap_or_default();
                self.positions
                    .values
                    .entry(path.clone())
                    .or_insert(location(mark));
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_nested_keys_and_sequence_items() {
        let text =
            "mqtt:\n  url: x\nroutes:\n  - name: a\n    retry:\n      attempts: 3\n  - name: b\n";
        let p = Positions::index(text);
        assert_eq!(p.key("mqtt.url"), Some(Location { line: 2, col: 3 }));
        assert_eq!(p.value("mqtt.url"), Some(Location { line: 2, col: 8 }));
        assert_eq!(p.value("routes[0].retry.attempts").map(|l| l.line), Some(6));
        assert_eq!(p.value("routes[1].name").map(|l| l.line), Some(7));
        assert_eq!(p.nearest("routes[1].nope.deeper").map(|l| l.line), Some(7));
    }
}
