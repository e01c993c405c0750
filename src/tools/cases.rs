//! `fxbridge plugin test`: runs a plugin's `cases.yaml` (format in
//! `plugins/README.md`) through a [`RouteTransform`] with the default limits,
//! i.e. in the production sandbox.
//!
//! Cases run in order on one instance (state carries over) unless a case sets
//! `fresh_instance: true`, sets its own `config` (which always gets its own
//! instance), or follows a trap (the transform discards a trapped instance by
//! itself). A `configure` failure surfaces in the first hook call of the case
//! that needed the instance and is matched by that case's `before.error` (or
//! `after.error`); a trap in `configure` by `trap: true`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

use crate::config::TransformLimits;
use crate::message::{OutMessage, PreDecision, QoS};
use crate::transform::{HookMessage, PluginHost, RouteTransform, TransformError};

/// A whole `cases.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Default transform config of every case.
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
fn default_qos() -> u8 {
    1
}

/// One case: a message and what the hooks must do with it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
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
    /// MQTT 5 payload format indicator (UTF-8).
    #[serde(default)]
    pub utf8: bool,
    #[serde(default)]
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data, as text.
    #[serde(default)]
    pub correlation_data: Option<String>,
}

/// Exactly one key.
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

/// `skip: true` (any reason) or `skip: "substring of the reason"`.
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

/// Exactly one key.
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
    /// Checked when given (contract 0.2.0 results).
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub utf8: Option<bool>,
    /// As text.
    #[serde(default)]
    pub correlation_data: Option<String>,
}

/// Expected bytes: exact (text or base64) or a JSON value.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Exact(Vec<u8>),
    Json(serde_json::Value),
}

impl Expected {
    fn from_keys(
        what: &str,
        text: &Option<String>,
        json: &Option<serde_yaml::Value>,
        b64: &Option<String>,
    ) -> Result<Expected> {
        match (text, json, b64) {
            (Some(t), None, None) => Ok(Expected::Exact(t.clone().into_bytes())),
            (None, Some(j), None) => Ok(Expected::Json(yaml_to_json(j)?)),
            (None, None, Some(b)) => Ok(Expected::Exact(decode_base64(b)?)),
            _ => bail!("{what}: give exactly one of the text, _json and _base64 forms"),
        }
    }

    fn matches(&self, actual: &[u8]) -> bool {
        match self {
            Expected::Exact(e) => e == actual,
            Expected::Json(e) => {
                serde_json::from_slice::<serde_json::Value>(actual).is_ok_and(|v| &v == e)
            }
        }
    }

    fn render(&self) -> String {
        match self {
            Expected::Exact(b) => render_bytes(b),
            Expected::Json(v) => format!("json {v}"),
        }
    }
}

fn render_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!(
            "base64 {}",
            base64::engine::general_purpose::STANDARD.encode(b)
        ),
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .context("invalid base64")
}

/// YAML to JSON (YAML keys must be strings).
pub fn yaml_to_json(value: &serde_yaml::Value) -> Result<serde_json::Value> {
    serde_json::to_value(value).context("YAML value has no JSON equivalent")
}

impl CaseFile {
    /// Reads and checks a case file (parse errors, duplicate names).
    pub fn load(path: &Path) -> Result<CaseFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: CaseFile = serde_yaml::from_str(&text)
            .with_context(|| format!("cannot parse {}", path.display()))?;
        let mut names = HashSet::new();
        for case in &file.cases {
            if !names.insert(case.name.as_str()) {
                bail!(
                    "{}: case name {:?} is used twice",
                    path.display(),
                    case.name
                );
            }
        }
        Ok(file)
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// What was expected and what happened, one rendering each.
    Mismatch {
        expected: String,
        got: String,
    },
    /// The case itself is malformed.
    BadCase(String),
}

/// Result of a whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    /// (case name, verdict) in file order.
    pub cases: Vec<(String, Verdict)>,
}

/// Loads `plugin` into `host` and runs every case of `cases`, printing one
/// line per case (`ok` / `FAIL` with expected and got) to stdout.
pub async fn run_file(host: &Arc<PluginHost>, plugin: &Path, cases: &Path) -> Result<Report> {
    let file = CaseFile::load(cases)?;
    let plugin = host.load(plugin)?;
    println!(
        "{}: {} world, {} case{}",
        plugin.path().display(),
        plugin.world(),
        file.cases.len(),
        if file.cases.len() == 1 { "" } else { "s" }
    );
    let file_config = match &file.config {
        Some(c) => yaml_to_json(c).context("file config")?.to_string(),
        None => "null".to_string(),
    };
    let limits = TransformLimits::default();
    let mut current: Option<(String, Arc<RouteTransform>)> = None;
    let mut report = Report::default();
    for case in &file.cases {
        let started = Instant::now();
        let verdict = match &case.config {
            Some(c) => match yaml_to_json(c) {
                Ok(j) => {
                    // A case config always gets its own instance.
                    let t = RouteTransform::new(
                        host,
                        Arc::clone(&plugin),
                        &file.route,
                        j.to_string(),
                        &limits,
                    );
                    current = Some((j.to_string(), Arc::clone(&t)));
                    run_case(&file, case, &t).await
                }
                Err(e) => Verdict::BadCase(format!("config: {e:#}")),
            },
            None => {
                let t = match &current {
                    Some((cfg, t)) if *cfg == file_config && !case.fresh_instance => Arc::clone(t),
                    _ => {
                        let t = RouteTransform::new(
                            host,
                            Arc::clone(&plugin),
                            &file.route,
                            file_config.clone(),
                            &limits,
                        );
                        current = Some((file_config.clone(), Arc::clone(&t)));
                        t
                    }
                };
                run_case(&file, case, &t).await
            }
        };
        // A case with its own config leaves no instance for the next case.
        if case.config.is_some() {
            current = None;
        }
        let ms = started.elapsed().as_millis();
        match &verdict {
            Verdict::Ok => {
                report.passed += 1;
                println!("ok    {} ({ms} ms)", case.name);
            }
            Verdict::Mismatch { expected, got } => {
                report.failed += 1;
                println!("FAIL  {} ({ms} ms)", case.name);
                println!("      expected: {expected}");
                println!("      got:      {got}");
            }
            Verdict::BadCase(why) => {
                report.failed += 1;
                println!("FAIL  {} ({ms} ms): invalid case: {why}", case.name);
            }
        }
        report.cases.push((case.name.clone(), verdict));
    }
    println!(
        "{} passed, {} failed ({})",
        report.passed,
        report.failed,
        if report.failed == 0 { "ok" } else { "FAILED" }
    );
    Ok(report)
}

async fn run_case(file: &CaseFile, case: &Case, t: &RouteTransform) -> Verdict {
    match try_case(file, case, t).await {
        Ok(v) => v,
        Err(e) => Verdict::BadCase(format!("{e:#}")),
    }
}

fn qos(level: u8) -> Result<QoS> {
    QoS::try_from(level).map_err(anyhow::Error::msg)
}

async fn try_case(file: &CaseFile, case: &Case, t: &RouteTransform) -> Result<Verdict> {
    let m = &case.message;
    let payload = match (&m.payload, &m.payload_base64) {
        (Some(text), None) => text.clone().into_bytes(),
        (None, Some(b64)) => decode_base64(b64)?,
        _ => bail!("message: give exactly one of payload and payload_base64"),
    };
    if case.reply.is_some() != case.after.is_some() {
        bail!("`reply` and `after` go together");
    }
    if case.before.is_none() && case.after.is_none() {
        bail!("a case needs a `before` or an `after` expectation");
    }
    let hook = HookMessage {
        route: &file.route,
        function: &file.function,
        topic: &m.topic,
        captures: &m.captures,
        payload: &payload,
        qos: qos(m.qos)?,
        retain: m.retain,
        user_properties: &m.user_properties,
        content_type: m.content_type.as_deref(),
        utf8: m.utf8,
        response_topic: m.response_topic.as_deref(),
        correlation_data: m.correlation_data.as_deref().map(str::as_bytes),
    };
    if let Some(expect) = &case.before {
        let got = t.before_invoke(&hook).await;
        let invoked = matches!(got, Ok(PreDecision::Invoke { .. }));
        let v = check_before(expect, &got)?;
        if v != Verdict::Ok || !invoked {
            if v == Verdict::Ok && case.after.is_some() {
                return Ok(Verdict::Mismatch {
                    expected: "the pre hook invokes (the case has `after`)".into(),
                    got: render_before(&got),
                });
            }
            return Ok(v);
        }
    }
    match (&case.reply, &case.after) {
        (Some(reply), Some(expect)) => {
            let got = t.after_invoke(&hook, reply).await;
            check_after(expect, &got)
        }
        _ => Ok(Verdict::Ok),
    }
}

fn one_of(keys: &[bool], what: &str) -> Result<()> {
    if keys.iter().filter(|k| **k).count() != 1 {
        bail!("{what}: give exactly one expectation");
    }
    Ok(())
}

fn render_err(e: &TransformError) -> String {
    format!("{} ({e})", e.kind())
}

fn render_before(got: &Result<PreDecision, TransformError>) -> String {
    match got {
        Ok(PreDecision::Invoke { input, function }) => match function {
            Some(f) => format!("invoke {f} with {}", render_bytes(input)),
            None => format!("invoke with {}", render_bytes(input)),
        },
        Ok(PreDecision::Skip { reason }) => format!("skip {reason:?}"),
        Err(e) => render_err(e),
    }
}

/// Matches an error expectation (`error: substring` / `trap: true`).
fn check_failure(
    error: &Option<String>,
    trap: Option<bool>,
    e: &TransformError,
    got: String,
) -> Verdict {
    match e {
        TransformError::Guest(reason) | TransformError::ConfigureFailed(reason) => match error {
            Some(needle) if reason.contains(needle.as_str()) => Verdict::Ok,
            Some(needle) => Verdict::Mismatch {
                expected: format!("error containing {needle:?}"),
                got,
            },
            None => Verdict::Mismatch {
                expected: expected_text(error, trap),
                got,
            },
        },
        e if e.is_trap() && trap == Some(true) => Verdict::Ok,
        _ => Verdict::Mismatch {
            expected: expected_text(error, trap),
            got,
        },
    }
}

fn expected_text(error: &Option<String>, trap: Option<bool>) -> String {
    match (error, trap) {
        (Some(n), _) => format!("error containing {n:?}"),
        (None, Some(true)) => "a trap".into(),
        _ => "a result".into(),
    }
}

fn check_before(
    expect: &BeforeExpect,
    got: &Result<PreDecision, TransformError>,
) -> Result<Verdict> {
    one_of(
        &[
            expect.invoke.is_some(),
            expect.skip.is_some(),
            expect.error.is_some(),
            expect.trap.is_some(),
        ],
        "before",
    )?;
    let rendered = render_before(got);
    let expected = if let Some(inv) = &expect.invoke {
        let input = Expected::from_keys(
            "before.invoke.input",
            &inv.input,
            &inv.input_json,
            &inv.input_base64,
        )?;
        let text = match &inv.function {
            Some(f) => format!("invoke {f} with {}", input.render()),
            None => format!("invoke with {}", input.render()),
        };
        if let Ok(PreDecision::Invoke {
            input: got_input,
            function,
        }) = got
        {
            if input.matches(got_input) && *function == inv.function {
                return Ok(Verdict::Ok);
            }
        }
        text
    } else if let Some(skip) = &expect.skip {
        if let Ok(PreDecision::Skip { reason }) = got {
            match skip {
                SkipExpect::Any(true) => return Ok(Verdict::Ok),
                SkipExpect::Reason(n) if reason.contains(n.as_str()) => return Ok(Verdict::Ok),
                _ => {}
            }
        }
        match skip {
            SkipExpect::Any(true) => "skip".to_string(),
            SkipExpect::Any(false) => bail!("before.skip: false is not an expectation"),
            SkipExpect::Reason(n) => format!("skip with a reason containing {n:?}"),
        }
    } else {
        if expect.trap == Some(false) {
            bail!("before.trap: false is not an expectation");
        }
        return Ok(match got {
            Err(e) => check_failure(&expect.error, expect.trap, e, rendered),
            Ok(_) => Verdict::Mismatch {
                expected: expected_text(&expect.error, expect.trap),
                got: rendered,
            },
        });
    };
    Ok(Verdict::Mismatch {
        expected,
        got: rendered,
    })
}

fn render_out(o: &OutMessage) -> String {
    let mut s = format!(
        "{{topic: {}, payload: {}, qos: {}",
        o.topic
            .as_deref()
            .map_or("null".to_string(), |t| format!("{t:?}")),
        render_bytes(&o.payload),
        o.qos
            .map_or("null".to_string(), |q| u8::from(q).to_string()),
    );
    if o.retain {
        s.push_str(", retain: true");
    }
    if !o.user_properties.is_empty() {
        s.push_str(&format!(", user_properties: {:?}", o.user_properties));
    }
    if let Some(ct) = &o.content_type {
        s.push_str(&format!(", content_type: {ct:?}"));
    }
    if o.utf8 {
        s.push_str(", utf8: true");
    }
    if let Some(cd) = &o.correlation_data {
        s.push_str(&format!(
            ", correlation_data: {:?}",
            String::from_utf8_lossy(cd)
        ));
    }
    s.push('}');
    s
}

fn render_publish_expect(p: &PublishExpect, payload: &Expected) -> String {
    let mut s = format!(
        "{{topic: {}, payload: {}, qos: {}",
        p.topic
            .as_deref()
            .map_or("null".to_string(), |t| format!("{t:?}")),
        payload.render(),
        p.qos.map_or("null".to_string(), |q| q.to_string()),
    );
    if p.retain {
        s.push_str(", retain: true");
    }
    if !p.user_properties.is_empty() {
        s.push_str(&format!(", user_properties: {:?}", p.user_properties));
    }
    if let Some(ct) = &p.content_type {
        s.push_str(&format!(", content_type: {ct:?}"));
    }
    if let Some(u) = p.utf8 {
        s.push_str(&format!(", utf8: {u}"));
    }
    if let Some(cd) = &p.correlation_data {
        s.push_str(&format!(", correlation_data: {cd:?}"));
    }
    s.push('}');
    s
}

fn check_after(
    expect: &AfterExpect,
    got: &Result<Vec<OutMessage>, TransformError>,
) -> Result<Verdict> {
    one_of(
        &[
            expect.publish.is_some(),
            expect.error.is_some(),
            expect.trap.is_some(),
        ],
        "after",
    )?;
    let rendered = match got {
        Ok(outs) => format!(
            "publish [{}]",
            outs.iter().map(render_out).collect::<Vec<_>>().join(", ")
        ),
        Err(e) => render_err(e),
    };
    let Some(want) = &expect.publish else {
        if expect.trap == Some(false) {
            bail!("after.trap: false is not an expectation");
        }
        return Ok(match got {
            Err(e) => check_failure(&expect.error, expect.trap, e, rendered),
            Ok(_) => Verdict::Mismatch {
                expected: expected_text(&expect.error, expect.trap),
                got: rendered,
            },
        });
    };
    let mut payloads = Vec::with_capacity(want.len());
    for (i, w) in want.iter().enumerate() {
        payloads.push(Expected::from_keys(
            &format!("after.publish[{i}].payload"),
            &w.payload,
            &w.payload_json,
            &w.payload_base64,
        )?);
        if let Some(q) = w.qos {
            qos(q).with_context(|| format!("after.publish[{i}].qos"))?;
        }
    }
    let expected = format!(
        "publish [{}]",
        want.iter()
            .zip(&payloads)
            .map(|(w, p)| render_publish_expect(w, p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ok = match got {
        Ok(outs) => {
            outs.len() == want.len()
                && outs
                    .iter()
                    .zip(want.iter().zip(&payloads))
                    .all(|(o, (w, p))| {
                        o.topic == w.topic
                            && p.matches(&o.payload)
                            && o.qos.map(u8::from) == w.qos
                            && o.retain == w.retain
                            && o.user_properties == w.user_properties
                            && w.content_type
                                .as_ref()
                                .is_none_or(|ct| o.content_type.as_ref() == Some(ct))
                            && w.utf8.is_none_or(|u| o.utf8 == u)
                            && w.correlation_data.as_ref().is_none_or(|cd| {
                                o.correlation_data.as_deref() == Some(cd.as_bytes())
                            })
                    })
        }
        Err(_) => false,
    };
    Ok(if ok {
        Verdict::Ok
    } else {
        Verdict::Mismatch {
            expected,
            got: rendered,
        }
    })
}
