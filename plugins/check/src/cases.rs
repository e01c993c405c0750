//! The `cases.yaml` format shared with `fxbridge plugin test`: a plugin's
//! test cases, each a message plus expectations for the two hooks.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

/// A whole `cases.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Default transform config for every case.
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    #[serde(default = "default_route")]
    pub route: String,
    #[serde(default = "default_function")]
    pub function: String,
    pub cases: Vec<Case>,
}

fn default_route() -> String {
    "test".to_string()
}

fn default_function() -> String {
    "echo".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Overrides the file's config; an instance with another config is
    /// never reused.
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    #[serde(default)]
    pub fresh_instance: bool,
    pub message: MessageSpec,
    #[serde(default)]
    pub before: Option<BeforeExpect>,
    #[serde(default)]
    pub reply: Option<String>,
    #[serde(default)]
    pub after: Option<AfterExpect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    pub topic: String,
    #[serde(default)]
    pub captures: Vec<String>,
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default = "default_qos")]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
    #[serde(default)]
    pub content_type: Option<String>,
}

fn default_qos() -> u8 {
    1
}

/// Exactly one of the keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeforeExpect {
    #[serde(default)]
    pub invoke: Option<InvokeExpect>,
    #[serde(default)]
    pub skip: Option<SkipExpect>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub trap: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SkipExpect {
    Any(bool),
    Reason(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeExpect {
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub input_json: Option<serde_yaml::Value>,
    #[serde(default)]
    pub input_base64: Option<String>,
    #[serde(default)]
    pub function: Option<String>,
}

/// Exactly one of the keys. `trap` is this tool's addition for post hooks
/// (the brief's format only lists it under `before`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterExpect {
    #[serde(default)]
    pub publish: Option<Vec<PublishExpect>>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub trap: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishExpect {
    pub topic: Option<String>,
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub payload_json: Option<serde_yaml::Value>,
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub qos: Option<u8>,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
}

/// Expected bytes: exact, as a JSON value, or base64.
#[derive(Debug, Clone, PartialEq)]
pub enum Bytes {
    Exact(Vec<u8>),
    Json(serde_json::Value),
}

impl Bytes {
    pub fn from_keys(
        what: &str,
        text: &Option<String>,
        json: &Option<serde_yaml::Value>,
        b64: &Option<String>,
    ) -> Result<Bytes> {
        match (text, json, b64) {
            (Some(t), None, None) => Ok(Bytes::Exact(t.clone().into_bytes())),
            (None, Some(j), None) => Ok(Bytes::Json(yaml_to_json(j)?)),
            (None, None, Some(b)) => Ok(Bytes::Exact(decode_base64(b)?)),
            _ => bail!("{what}: give exactly one of the text, _json and _base64 forms"),
        }
    }

    /// `Ok(())` when `actual` matches, else a description of the mismatch.
    pub fn check(&self, actual: &[u8]) -> std::result::Result<(), String> {
        match self {
            Bytes::Exact(expected) if expected == actual => Ok(()),
            Bytes::Exact(expected) => Err(format!(
                "expected {:?}, got {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(actual)
            )),
            Bytes::Json(expected) => match serde_json::from_slice::<serde_json::Value>(actual) {
                Ok(value) if &value == expected => Ok(()),
                Ok(value) => Err(format!("expected JSON {expected}, got {value}")),
                Err(e) => Err(format!(
                    "expected JSON {expected}, got non-JSON {:?} ({e})",
                    String::from_utf8_lossy(actual)
                )),
            },
        }
    }
}

pub fn decode_base64(text: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .context("invalid base64")
}

/// YAML config / expectations to JSON; YAML keys must be strings.
pub fn yaml_to_json(value: &serde_yaml::Value) -> Result<serde_json::Value> {
    serde_json::to_value(value).context("YAML value has no JSON equivalent")
}

impl CaseFile {
    pub fn load(path: &std::path::Path) -> Result<CaseFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: CaseFile =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut names = HashMap::new();
        for (i, case) in file.cases.iter().enumerate() {
            if let Some(first) = names.insert(case.name.as_str(), i) {
                bail!("case name {:?} used twice (cases {first} and {i})", case.name);
            }
        }
        Ok(file)
    }
}
