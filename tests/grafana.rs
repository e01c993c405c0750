//! The Grafana dashboard `deploy/grafana/fxbridge.json` against the bridge it
//! is meant for.
//!
//! - It is a well-formed dashboard: unique panel ids and titles, every panel
//!   and query on the `${datasource}` variable, every `$variable` defined,
//!   panels inside the 24-column grid and not overlapping, every PromQL
//!   expression readable, and the operator's categories covered (throughput,
//!   latency percentiles, dead letters, plugin errors/traps/timeouts, reloads,
//!   connections, load).
//! - Every metric its queries use (panels, nested rows, template variables,
//!   annotations) is a series a *running* bridge exports at `/metrics`: a real
//!   bridge with a plugin route, a mosquitto and a stand-in gateway, after
//!   messages went through it (good ones, a plugin trap and a plugin error).
//!   Each label a query matches on is one the series carries (or the
//!   Prometheus target labels `job` and `instance`), each literal label value
//!   exists, counters and histogram series are read through `rate`/`increase`
//!   and gauges are not. A misspelt metric fails, naming it and its panel.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use common::bridge::{http_get, metric, start_in_process};
use common::wait::wait_until_async;
use common::{dist, publish_all, BridgeConfig, Collector, Mosquitto, TestGateway};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

/// Labels Prometheus adds to every series of a scrape target.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// What the dashboard must show, by the operator's question: each metric must
/// be queried by some panel.
const REQUIRED: [(&str, &[&str]); 7] = [
    (
        "throughput",
        &[
            "fxbridge_route_messages_total",
            "fxbridge_route_published_total",
            "fxbridge_received_total",
            "fxbridge_acked_total",
        ],
    ),
    (
        "latency percentiles",
        &[
            "fxbridge_route_latency_seconds_bucket",
            "fxbridge_route_invoke_seconds_bucket",
            "fxbridge_route_before_invoke_seconds_bucket",
            "fxbridge_route_after_invoke_seconds_bucket",
        ],
    ),
    (
        "dead letters",
        &[
            "fxbridge_route_dead_letters_total",
            "fxbridge_unrouted_dead_letters_total",
        ],
    ),
    (
        "plugin errors",
        &[
            "fxbridge_plugin_errors_total",
            "fxbridge_plugin_calls_total",
        ],
    ),
    (
        "reloads",
        &["fxbridge_reloads_total", "fxbridge_reload_failures_total"],
    ),
    (
        "connections",
        &[
            "fxbridge_broker_connected",
            "fxbridge_gateway_connected",
            "fxbridge_session_connected",
            "fxbridge_ready",
            "fxbridge_gateway_connect_failures_total",
        ],
    ),
    (
        "load",
        &[
            "fxbridge_route_in_flight",
            "fxbridge_session_pending",
            "fxbridge_backpressure_total",
            "fxbridge_route_retries_total",
            "fxbridge_route_invoke_failures_total",
        ],
    ),
];

/// PromQL functions and aggregations (and Grafana's variable-query
/// functions); any other name before `(` is a typo.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "day_of_month",
    "day_of_week",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "predict_linear",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
    // Grafana's Prometheus variable queries.
    "label_values",
    "label_names",
    "metrics",
    "query_result",
];

/// Words that are neither metric names nor functions.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// Words followed by a label list: `by (route)`, `on (instance)`.
const MODIFIERS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Functions that read a counter (or a histogram's counters) correctly.
const COUNTER_FUNCTIONS: &[&str] = &["rate", "irate", "increase", "changes", "resets"];

// ---------------------------------------------------------------------------
// The dashboard and its queries.

fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/fxbridge.json")
}

fn load_dashboard() -> Value {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    Panel,
    Variable,
    Annotation,
}

/// One PromQL expression of the dashboard and where it is.
#[derive(Debug)]
struct Query {
    /// `panel "Title" (id 9)`, `variable "route"`, `annotation "..."`.
    place: String,
    source: Source,
    expr: String,
}

/// Every panel, rows and the panels nested in (collapsed) rows included.
fn all_panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn panel_place(p: &Value) -> String {
    format!(
        "panel {:?} (id {})",
        p["title"].as_str().unwrap_or("<untitled>"),
        p["id"]
    )
}

fn variables(dash: &Value) -> Vec<&Value> {
    dash["templating"]["list"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default()
}

/// Every PromQL expression: panel targets, query variables, annotations.
fn queries(dash: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in all_panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Query {
                    place: panel_place(p),
                    source: Source::Panel,
                    expr: expr.to_string(),
                });
            }
        }
    }
    for v in variables(dash) {
        if v["type"] != "query" {
            continue;
        }
        // Grafana writes the query as a string or as `{query: "...", ...}`.
        let expr = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or_default();
        out.push(Query {
            place: format!("variable {:?}", v["name"].as_str().unwrap_or("?")),
            source: Source::Variable,
            expr: expr.to_string(),
        });
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push(Query {
                place: format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                source: Source::Annotation,
                expr: expr.to_string(),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// A PromQL reader: enough to find every selector, its matchers and the
// functions around it.

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number,
    Var,
    Open,
    Close,
    LBrace,
    RBrace,
    Comma,
    Op(String),
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '"' | '\'' | '`' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string in {expr:?}")),
                        Some('\\') if c != '`' => {
                            if let Some(&n) = chars.get(i + 1) {
                                s.push(n);
                            }
                            i += 2;
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(&o) => {
                            s.push(o);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Str(s));
            }
            // A range or subquery: durations and variables only.
            '[' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .ok_or_else(|| format!("unclosed [ in {expr:?}"))?;
                i += end + 1;
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
                out.push(Token::Var);
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Token::Number);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                out.push(Token::Ident(chars[start..i].iter().collect()));
            }
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            '{' => {
                out.push(Token::LBrace);
                i += 1;
            }
            '}' => {
                out.push(Token::RBrace);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len() && "=!~<>+-*/%^@".contains(chars[i]) {
                    i += 1;
                }
                if i == start {
                    return Err(format!("unexpected {c:?} in {expr:?}"));
                }
                out.push(Token::Op(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

/// One label matcher of a selector: `route=~"$route"`.
#[derive(Debug, Clone)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// A metric selector of an expression, with the calls around it (innermost
/// last).
#[derive(Debug, Clone)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
    calls: Vec<String>,
}

impl Selector {
    /// The call directly around the selector (`rate` in `sum(rate(x[5m]))`).
    fn enclosing(&self) -> &str {
        self.calls.last().map_or("", String::as_str)
    }
}

fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let tokens = tokenize(expr)?;
    let mut out = Vec::new();
    // Calls (and bare parentheses, as "") around the current token.
    let mut calls: Vec<String> = Vec::new();
    let mut i = 0;
    // Skips a label list `( a, b )` starting at `i`; returns the index after it.
    let skip_list = |mut i: usize| -> Result<usize, String> {
        if tokens.get(i) != Some(&Token::Open) {
            return Err(format!("expected a label list in {expr:?}"));
        }
        while tokens.get(i) != Some(&Token::Close) {
            if i >= tokens.len() {
                return Err(format!("unclosed label list in {expr:?}"));
            }
            i += 1;
        }
        Ok(i + 1)
    };
    let matchers = |mut i: usize| -> Result<(Vec<Matcher>, usize), String> {
        // tokens[i] is `{`.
        let mut ms = Vec::new();
        i += 1;
        loop {
            match (tokens.get(i), tokens.get(i + 1), tokens.get(i + 2)) {
                (Some(Token::RBrace), _, _) => return Ok((ms, i + 1)),
                (Some(Token::Ident(label)), Some(Token::Op(op)), Some(Token::Str(value)))
                    if ["=", "!=", "=~", "!~"].contains(&op.as_str()) =>
                {
                    ms.push(Matcher {
                        label: label.clone(),
                        op: op.clone(),
                        value: value.clone(),
                    });
                    i += 3;
                    if tokens.get(i) == Some(&Token::Comma) {
                        i += 1;
                    }
                }
                _ => return Err(format!("unreadable label matchers in {expr:?}")),
            }
        }
    };
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) => {
                let word = word.as_str();
                let next = tokens.get(i + 1);
                if MODIFIERS.contains(&word) {
                    i = if next == Some(&Token::Open) {
                        skip_list(i + 1)?
                    } else {
                        i + 1
                    };
                } else if FUNCTIONS.contains(&word) {
                    // `sum by (le) (...)` or `sum(...)`.
                    let mut j = i + 1;
                    if let Some(Token::Ident(m)) = tokens.get(j) {
                        if m == "by" || m == "without" {
                            j = skip_list(j + 1)?;
                        }
                    }
                    if tokens.get(j) != Some(&Token::Open) {
                        return Err(format!("{word} without ( in {expr:?}"));
                    }
                    calls.push(word.to_string());
                    i = j + 1;
                } else if next == Some(&Token::Open) {
                    return Err(format!("unknown function {word}( in {expr:?}"));
                } else if KEYWORDS.contains(&word) {
                    i += 1;
                } else {
                    let (ms, after) = if next == Some(&Token::LBrace) {
                        matchers(i + 1)?
                    } else {
                        (Vec::new(), i + 1)
                    };
                    out.push(Selector {
                        name: word.to_string(),
                        matchers: ms,
                        calls: calls.clone(),
                    });
                    i = after;
                }
            }
            Token::LBrace => return Err(format!("a selector without a metric name in {expr:?}")),
            Token::Open => {
                calls.push(String::new());
                i += 1;
            }
            Token::Close => {
                calls
                    .pop()
                    .ok_or_else(|| format!("unbalanced ) in {expr:?}"))?;
                i += 1;
            }
            _ => i += 1,
        }
    }
    if !calls.is_empty() {
        return Err(format!("unbalanced ( in {expr:?}"));
    }
    Ok(out)
}

/// The `$name`, `${name}` and `[[name]]` variables an expression uses.
fn variables_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("[[") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find("]]") {
            out.insert(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn the_reader_finds_selectors_matchers_and_calls() {
    let s = selectors(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(fxbridge_a_bucket{route=~"$route", kind="trap"}[$__rate_interval]))) / on (route) group_left max(fxbridge_b) * 60"#,
    )
    .expect("readable");
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].name, "fxbridge_a_bucket");
    assert_eq!(s[0].calls, ["histogram_quantile", "sum", "rate"]);
    assert_eq!(s[0].matchers[1].label, "kind");
    assert_eq!(s[0].matchers[1].value, "trap");
    assert_eq!(s[1].name, "fxbridge_b");
    assert_eq!(s[1].enclosing(), "max");
    assert!(
        selectors("rtae(fxbridge_a[5m])").is_err(),
        "a misspelt function"
    );
    assert!(selectors("sum(rate(fxbridge_a[5m])").is_err(), "unbalanced");
    let v = selectors(r#"label_values(fxbridge_r{job=~"$job"}, route)"#).expect("readable");
    let names: Vec<_> = v.iter().map(|s| s.name.as_str()).collect();
    // The label argument reads as a bare name: the check keeps only fxbridge_ ones.
    assert_eq!(names, ["fxbridge_r", "route"]);
    assert_eq!(
        variables_used(r#"x{a=~"$job", b="${instance}", c="[[old]]"}[$__range]"#),
        ["__range", "instance", "job", "old"]
            .map(String::from)
            .into()
    );
}

// ---------------------------------------------------------------------------
// The static checks.

/// Every problem of the dashboard itself, as lines naming the panel.
fn dashboard_problems(dash: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bad = |s: String| problems.push(s);
    let ds_ref = |v: &Value| v["type"] == "prometheus" && v["uid"] == "${datasource}";

    if dash["schemaVersion"].as_u64().unwrap_or(0) < 36 {
        bad(format!(
            "schemaVersion {} (Grafana 10+ dashboards are 36 or later)",
            dash["schemaVersion"]
        ));
    }
    for key in ["uid", "title"] {
        if dash[key].as_str().is_none_or(str::is_empty) {
            bad(format!("the dashboard has no {key}"));
        }
    }

    // Template variables.
    let vars = variables(dash);
    let defined: BTreeSet<String> = vars
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    match vars.iter().find(|v| v["name"] == "datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => bad("no `datasource` variable of type datasource for prometheus".into()),
    }
    for v in &vars {
        if v["type"] == "query" && !ds_ref(&v["datasource"]) {
            bad(format!(
                "variable {} is not on ${{datasource}}: {}",
                v["name"], v["datasource"]
            ));
        }
    }
    let route_var = vars.iter().find(|v| v["name"] == "route");
    let route_query = route_var
        .map(|v| v["definition"].as_str().unwrap_or_default())
        .unwrap_or_default();
    if !(route_query.starts_with("label_values(fxbridge_route_")
        && route_query.ends_with(", route)"))
    {
        bad(format!(
            "no `route` variable from label_values(fxbridge_route_..., route): {route_query:?}"
        ));
    }

    // Panels.
    let panels = all_panels(dash);
    let mut ids = HashMap::new();
    let mut titles = HashMap::new();
    for p in &panels {
        let place = panel_place(p);
        match p["id"].as_u64() {
            Some(id) => {
                if let Some(other) = ids.insert(id, place.clone()) {
                    bad(format!("{place}: id {id} is also {other}"));
                }
            }
            None => bad(format!("{place}: no numeric id")),
        }
        let title = p["title"].as_str().unwrap_or_default();
        if title.is_empty() {
            bad(format!("{place}: no title"));
        } else if let Some(other) = titles.insert(title.to_string(), place.clone()) {
            bad(format!("{place}: title also used by {other}"));
        }
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        match (x, w, h, g["y"].as_u64()) {
            (Some(x), Some(w), Some(h), Some(_)) if w > 0 && h > 0 && x + w <= 24 => {}
            _ => bad(format!(
                "{place}: gridPos {g} is not inside the 24-column grid"
            )),
        }
        if p["type"] == "row" {
            continue;
        }
        if !ds_ref(&p["datasource"]) {
            bad(format!(
                "{place}: datasource {} is not the ${{datasource}} variable",
                p["datasource"]
            ));
        }
        if p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            bad(format!("{place}: no unit"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            bad(format!("{place}: no query"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            if t["expr"].as_str().is_none_or(str::is_empty) {
                bad(format!("{place}: a target without expr"));
            }
            if !ds_ref(&t["datasource"]) {
                bad(format!(
                    "{place}: target {} is not on ${{datasource}}",
                    t["refId"]
                ));
            }
            if !refs.insert(t["refId"].as_str().unwrap_or_default().to_string()) {
                bad(format!("{place}: refId {} twice", t["refId"]));
            }
        }
    }
    for grid in grids(dash) {
        for (n, a) in grid.iter().enumerate() {
            for b in &grid[n + 1..] {
                if overlap(a, b) {
                    bad(format!("{} overlaps {}", panel_place(a), panel_place(b)));
                }
            }
        }
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if a.get("expr").is_some() && !ds_ref(&a["datasource"]) {
            bad(format!(
                "annotation {} is not on ${{datasource}}",
                a["name"]
            ));
        }
    }

    // Queries: readable, variables defined, categories covered.
    let mut used: BTreeMap<String, Vec<Selector>> = BTreeMap::new();
    for q in queries(dash) {
        for var in variables_used(&q.expr) {
            if !var.starts_with("__") && !defined.contains(&var) {
                bad(format!("{}: ${var} is not a dashboard variable", q.place));
            }
        }
        match selectors(&q.expr) {
            Ok(sels) if q.source == Source::Panel => {
                for s in sels {
                    used.entry(s.name.clone()).or_default().push(s);
                }
            }
            Ok(_) => {}
            Err(e) => bad(format!("{}: {e}", q.place)),
        }
    }
    for (category, names) in REQUIRED {
        for name in names {
            if !used.contains_key(*name) {
                bad(format!("no panel shows {category}: {name} is not queried"));
            }
        }
    }
    for kind in ["trap", "timeout"] {
        let shown = used
            .get("fxbridge_plugin_errors_total")
            .into_iter()
            .flatten()
            .any(|s| {
                s.matchers
                    .iter()
                    .any(|m| m.label == "kind" && m.op == "=" && m.value == kind)
            });
        if !shown {
            bad(format!(
                "no panel shows plugin {kind}s: fxbridge_plugin_errors_total{{kind=\"{kind}\"}}"
            ));
        }
    }
    if !used.keys().filter(|n| n.ends_with("_bucket")).all(|n| {
        used[n]
            .iter()
            .all(|s| s.calls.iter().any(|c| c == "histogram_quantile"))
    }) {
        bad("a histogram's _bucket series is read without histogram_quantile".into());
    }
    problems
}

/// The panels laid out together: the top level (collapsed rows' panels
/// excluded), and the panels of each collapsed row among themselves.
fn grids(dash: &Value) -> Vec<Vec<&Value>> {
    let top: Vec<&Value> = dash["panels"].as_array().into_iter().flatten().collect();
    let mut out = vec![top.clone()];
    for row in top {
        if let Some(nested) = row["panels"].as_array().filter(|n| !n.is_empty()) {
            out.push(nested.iter().collect());
        }
    }
    out
}

fn overlap(a: &Value, b: &Value) -> bool {
    let r = |p: &Value, k: &str| p["gridPos"][k].as_u64().unwrap_or(0);
    let (ax, ay, aw, ah) = (r(a, "x"), r(a, "y"), r(a, "w"), r(a, "h"));
    let (bx, by, bw, bh) = (r(b, "x"), r(b, "y"), r(b, "w"), r(b, "h"));
    ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah
}

#[test]
fn the_dashboard_is_well_formed_and_covers_the_operators_questions() {
    let dash = load_dashboard();
    let problems = dashboard_problems(&dash);
    assert!(
        problems.is_empty(),
        "{} has {} problem(s):\n  {}",
        dashboard_path().display(),
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Against a running bridge.

/// A `/metrics` page: the type of each family, the label sets of each series.
struct Scrape {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Scrape {
    fn parse(page: &str) -> Scrape {
        let mut types = BTreeMap::new();
        let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..end];
            let labels = if line[end..].starts_with('{') {
                parse_labels(&line[end + 1..])
            } else {
                BTreeMap::new()
            };
            series.entry(name.to_string()).or_default().push(labels);
        }
        Scrape { types, series }
    }

    /// The type of the family a series belongs to: `counter` for
    /// `x_total`, `histogram` for `x_bucket` of histogram `x`.
    fn type_of(&self, series: &str) -> Option<&str> {
        if let Some(t) = self.types.get(series) {
            return Some(t);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let family = series.strip_suffix(suffix)?;
            self.types
                .get(family)
                .map(String::as_str)
                .filter(|t| *t == "histogram")
        })
    }

    /// The exported series names closest to `name` (for a typo's message).
    fn closest(&self, name: &str) -> String {
        self.series
            .keys()
            .min_by_key(|k| edit_distance(k, name))
            .cloned()
            .unwrap_or_default()
    }
}

/// The labels of a sample line after its `{`.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let key = key.trim_start_matches(',').trim().to_string();
        if key.is_empty() || key.starts_with('}') || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key, value);
        if chars.peek() == Some(&'}') {
            return out;
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Every way the dashboard's queries disagree with what the bridge exports.
fn mismatches(dash: &Value, scrape: &Scrape) -> Vec<String> {
    let mut problems = Vec::new();
    for q in queries(dash) {
        let sels = match selectors(&q.expr) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{}: {e}", q.place));
                continue;
            }
        };
        if q.source != Source::Variable && !sels.iter().any(|s| s.name.starts_with("fxbridge_")) {
            problems.push(format!(
                "{}: queries no fxbridge_ metric: {}",
                q.place, q.expr
            ));
        }
        for s in sels {
            // In a variable query the label argument reads as a bare name.
            if q.source == Source::Variable && !s.name.starts_with("fxbridge_") {
                continue;
            }
            let Some(samples) = scrape.series.get(&s.name) else {
                problems.push(format!(
                    "{}: {} is not exported by a running bridge (did you mean {}?)",
                    q.place,
                    s.name,
                    scrape.closest(&s.name)
                ));
                continue;
            };
            for m in &s.matchers {
                if TARGET_LABELS.contains(&m.label.as_str()) {
                    continue;
                }
                if !samples.iter().any(|l| l.contains_key(&m.label)) {
                    problems.push(format!(
                        "{}: {} has no label {:?} (it has {:?})",
                        q.place,
                        s.name,
                        m.label,
                        samples
                            .iter()
                            .flat_map(|l| l.keys())
                            .collect::<BTreeSet<_>>()
                    ));
                } else if m.op == "=" && !m.value.contains('$') {
                    let values: BTreeSet<&String> =
                        samples.iter().filter_map(|l| l.get(&m.label)).collect();
                    if !values.contains(&m.value) {
                        problems.push(format!(
                            "{}: {}{{{}=\"{}\"}} is not exported (values: {values:?})",
                            q.place, s.name, m.label, m.value
                        ));
                    }
                }
            }
            if q.source == Source::Variable {
                continue;
            }
            let around = s.enclosing();
            match scrape.type_of(&s.name) {
                Some("counter" | "histogram") if !COUNTER_FUNCTIONS.contains(&around) => {
                    problems.push(format!(
                        "{}: counter {} is read without rate/increase (inside {around:?})",
                        q.place, s.name
                    ));
                }
                Some("gauge") if COUNTER_FUNCTIONS.contains(&around) && around != "changes" => {
                    problems.push(format!(
                        "{}: gauge {} is read with {around}()",
                        q.place, s.name
                    ));
                }
                Some(_) => {}
                None => problems.push(format!("{}: {} has no # TYPE in /metrics", q.place, s.name)),
            }
        }
    }
    problems
}

/// A bridge with a plugin route (the hostile plugin: it traps or fails on
/// command), messages through it, then `/metrics` against every query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported_by_a_running_bridge() {
    let dash = load_dashboard();
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let admin = common::free_port();
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url()).route(&format!(
        r#"{{name: g, topic: "g/+", function: echo, republish: {{topic: "g-out/{{1}}"}}, transform: {{component: {:?}}}}}"#,
        dist("hostile").display().to_string()
    ));
    cfg.admin_port = Some(admin);
    cfg.extra = format!(
        "plugins:\n  cache_dir: {:?}\n",
        common::plugins::shared_cache_dir().display().to_string()
    );
    let out = Collector::start(broker.port(), &["g-out/+", "fxbridge/dead-letter/#"]).await;
    let bridge = start_in_process(&cfg).await;

    // Three that go through, one plugin trap, one plugin error (both
    // dead-lettered).
    let msgs: Vec<(String, Vec<u8>)> = ["a", "b", "c", "unreachable", "fail"]
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("g/{i}"), p.as_bytes().to_vec()))
        .collect();
    publish_all(broker.port(), &msgs).await;
    out.wait_for_distinct(5, LONG).await;
    let scrape_page = || async {
        http_get(admin, "/metrics")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    };
    wait_until_async(
        LONG,
        "/metrics counting 5 messages acknowledged",
        || async { metric(&scrape_page().await, "acked_total") == Some(5) },
    )
    .await;
    // Nothing more arrives: the counters stay as they are now.
    let page = scrape_page().await;
    let count = |series: &str| metric(&page, series);
    assert_eq!(
        count("route_messages_total{route=\"g\"}"),
        Some(5),
        "{page}"
    );
    assert_eq!(
        count("route_published_total{route=\"g\"}"),
        Some(3),
        "{page}"
    );
    assert_eq!(
        count("route_dead_letters_total{route=\"g\"}"),
        Some(2),
        "{page}"
    );
    assert_eq!(
        count("plugin_errors_total{route=\"g\",kind=\"trap\"}"),
        Some(1),
        "{page}"
    );
    assert_eq!(
        count("plugin_errors_total{route=\"g\",kind=\"guest_error\"}"),
        Some(1),
        "{page}"
    );

    let scrape = Scrape::parse(&page);
    let problems = mismatches(&dash, &scrape);
    assert!(
        problems.is_empty(),
        "{} queries what the bridge does not export ({} problem(s)):\n  {}\n--- /metrics:\n{page}",
        dashboard_path().display(),
        problems.len(),
        problems.join("\n  ")
    );
    bridge.stop().await.expect("bridge stop");
}
