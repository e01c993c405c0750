//! MQTT topic filters, wildcard captures, and topic templates.
//!
//! A route's filter decides which messages it takes and what its `+` and `#`
//! wildcards captured; a [`Template`] turns those captures back into a topic for
//! the republish and dead-letter targets. Topics built from data are checked
//! before they are used: no `+`, `#` or NUL, not empty, and no leading `$` unless
//! the configured template itself starts with one.

use std::fmt;

/// One level of a parsed topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `+`: exactly one level.
    Single,
    /// `#`: this level and every level below it (always last).
    Multi,
}

/// A parsed MQTT topic filter, possibly a shared subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    /// The filter as written, `$share/<group>/` prefix included: what is subscribed.
    raw: String,
    share_group: Option<String>,
    levels: Vec<Level>,
}

impl TopicFilter {
    /// Parses a filter such as `sensors/+/temp`, `logs/#` or `$share/g/sensors/#`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("a topic filter cannot be empty".into());
        }
        if raw.contains('\0') {
            return Err("a topic filter cannot contain NUL".into());
        }
        if raw.len() > 65_535 {
            return Err("a topic filter is at most 65535 bytes long".into());
        }
        let (share_group, filter) = match raw.strip_prefix("$share/") {
            Some(rest) => {
                let (group, filter) = rest.split_once('/').ok_or_else(|| {
                    format!("shared subscription {raw:?} needs the form $share/<group>/<filter>")
                })?;
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(format!(
                        "shared subscription group {group:?} must be non-empty and contain no wildcard"
                    ));
                }
                if filter.is_empty() {
                    return Err(format!("shared subscription {raw:?} has an empty filter"));
                }
                (Some(group.to_string()), filter)
            }
            None => (None, raw),
        };
        Self::from_levels(raw, share_group, filter)
    }

    /// Parses `raw` as a filter of topic names only: a leading `$share/` is
    /// two literal levels here, not a shared subscription. For the topic space
    /// of a template, whose literal text may start with anything.
    fn parse_plain(raw: &str) -> Result<Self, String> {
        Self::from_levels(raw, None, raw)
    }

    fn from_levels(raw: &str, share_group: Option<String>, filter: &str) -> Result<Self, String> {
        let parts: Vec<&str> = filter.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Single,
                "#" if i + 1 == parts.len() => Level::Multi,
                "#" => return Err(format!("in {raw:?}, '#' must be the last level")),
                p if p.contains(['+', '#']) => {
                    return Err(format!(
                        "in {raw:?}, a wildcard must take a whole level (level {:?})",
                        p
                    ))
                }
                p => Level::Literal(p.to_string()),
            };
            levels.push(level);
        }
        Ok(TopicFilter {
            raw: raw.to_string(),
            share_group,
            levels,
        })
    }

    /// The filter as subscribed, including any `$share/<group>/` prefix.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The filter without a `$share/<group>/` prefix: the topics it matches.
    pub fn topics(&self) -> &str {
        match &self.share_group {
            Some(group) => &self.raw["$share/".len() + group.len() + 1..],
            None => &self.raw,
        }
    }

    /// Whether the first level is a name, not a wildcard.
    pub fn starts_with_literal(&self) -> bool {
        matches!(self.levels.first(), Some(Level::Literal(_)))
    }

    /// Whether the `i`-th capture (0-based) is the `#` one, which may span levels.
    fn capture_is_multi_level(&self, i: usize) -> bool {
        matches!(self.levels.last(), Some(Level::Multi)) && i + 1 == self.capture_count()
    }

    /// The shared-subscription group, if this is a `$share/...` filter.
    pub fn share_group(&self) -> Option<&str> {
        self.share_group.as_deref()
    }

    /// How many values a match captures (one per `+`, one for a `#`).
    pub fn capture_count(&self) -> usize {
        self.levels
            .iter()
            .filter(|l| !matches!(l, Level::Literal(_)))
            .count()
    }

    /// Matches a concrete topic; on a match, returns the wildcard captures in order.
    ///
    /// Follows MQTT-4.7.2-1: a filter that starts with a wildcard does not match a
    /// topic that starts with `$`. A `#` capture is the rest of the topic and may
    /// contain `/`; `sport/#` matches `sport` itself with an empty capture.
    pub fn matches(&self, topic: &str) -> Option<Vec<String>> {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return None;
        }
        let mut captures = Vec::new();
        let mut rest = Some(topic);
        for level in &self.levels {
            match level {
                Level::Multi => {
                    captures.push(rest.unwrap_or("").to_string());
                    return Some(captures);
                }
                Level::Single | Level::Literal(_) => {
                    let current = rest?;
                    let (head, tail) = match current.split_once('/') {
                        Some((h, t)) => (h, Some(t)),
                        None => (current, None),
                    };
                    match level {
                        Level::Literal(lit) if lit != head => return None,
                        Level::Single => captures.push(head.to_string()),
                        _ => {}
                    }
                    rest = tail;
                }
            }
        }
        rest.is_none().then_some(captures)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{topic}`: the source topic.
    Topic,
    /// `{route}`: the route's name.
    Route,
    /// `{1}`, `{2}`, ...: the n-th wildcard capture (stored zero-based).
    Capture(usize),
}

/// What a template can draw on when it is rendered.
#[derive(Debug, Clone, Copy)]
pub struct TemplateContext<'a> {
    pub topic: &'a str,
    pub route: &'a str,
    pub captures: &'a [String],
}

/// A topic template such as `results/{1}/temperature` or `dead/{route}/{topic}`.
///
/// Placeholders: `{topic}`, `{route}`, and `{1}`..`{n}` for the wildcard captures
/// of the route's filter. `{{` and `}}` write literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template whose route filter has `captures` wildcards.
    pub fn parse(raw: &str, captures: usize) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("a topic template cannot be empty".into());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("in {raw:?}, '{{' is never closed")),
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Self::placeholder(raw, &name, captures)?);
                }
                '}' => return Err(format!("in {raw:?}, '}}' has no matching '{{'")),
                '+' | '#' => {
                    return Err(format!("{raw:?} is a topic, so it cannot contain '{c}'"));
                }
                '\0' => return Err(format!("{raw:?} cannot contain NUL")),
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            raw: raw.to_string(),
            parts,
        })
    }

    fn placeholder(raw: &str, name: &str, captures: usize) -> Result<Part, String> {
        match name {
            "topic" => Ok(Part::Topic),
            "route" => Ok(Part::Route),
            n => match n.parse::<usize>() {
                Ok(i) if (1..=captures).contains(&i) => Ok(Part::Capture(i - 1)),
                Ok(i) => Err(format!(
                    "in {raw:?}, {{{i}}} refers to capture {i}, but the route's filter has {captures} wildcard{}",
                    if captures == 1 { "" } else { "s" }
                )),
                Err(_) => Err(format!(
                    "in {raw:?}, unknown placeholder {{{n}}}: use {{topic}}, {{route}} or {{1}}..{{n}} for wildcard captures"
                )),
            },
        }
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The topics this template can render into, as a filter, for the route
    /// whose filter is `filter` and whose name is `route`: literal levels stay,
    /// a level with a one-level value (`{route}`, a `+` capture) becomes `+`, and
    /// from the first level with a value that may span levels (`{topic}`, the
    /// `#` capture) on, `#`. `results/{1}/t` under `s/+/in` is `results/+/t`.
    pub fn topic_space(&self, filter: &TopicFilter, route: &str) -> TopicFilter {
        /// What the level being built holds besides literal text.
        #[derive(Clone, Copy, PartialEq)]
        enum Value {
            None,
            One,
            Many,
        }
        let mut levels: Vec<String> = Vec::new();
        let mut literal = String::new();
        let mut value = Value::None;
        'parts: for part in &self.parts {
            let v = match part {
                Part::Literal(s) => {
                    let mut pieces = s.split('/');
                    literal.push_str(pieces.next().unwrap_or_default());
                    for piece in pieces {
                        match value {
                            Value::Many => break 'parts,
                            Value::One => levels.push("+".into()),
                            Value::None => levels.push(std::mem::take(&mut literal)),
                        }
                        literal = piece.to_string();
                        value = Value::None;
                    }
                    continue;
                }
                Part::Topic => Value::Many,
                Part::Route if route.contains('/') => Value::Many,
                Part::Route => Value::One,
                Part::Capture(i) if filter.capture_is_multi_level(*i) => Value::Many,
                Part::Capture(_) => Value::One,
            };
            if value != Value::Many {
                value = v;
            }
        }
        match value {
            Value::Many => levels.push("#".into()),
            Value::One => levels.push("+".into()),
            Value::None => levels.push(literal),
        }
        let raw = levels.join("/");
        // Every level is a literal from a parsed template (no wildcard, no
        // NUL), `+`, or a final `#`.
        TopicFilter::parse_plain(&raw).unwrap_or_else(|_| TopicFilter {
            raw: "#".into(),
            share_group: None,
            levels: vec![Level::Multi],
        })
    }

    /// Fills in the placeholders and checks that the result is a publishable topic.
    pub fn render(&self, ctx: TemplateContext<'_>) -> Result<String, String> {
        let mut out = String::with_capacity(self.raw.len() + ctx.topic.len());
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Topic => out.push_str(ctx.topic),
                Part::Route => out.push_str(ctx.route),
                Part::Capture(i) => out.push_str(ctx.captures.get(*i).map_or("", String::as_str)),
            }
        }
        let allow_dollar =
            matches!(self.parts.first(), Some(Part::Literal(s)) if s.starts_with('$'));
        check_publish_topic(&out, allow_dollar)?;
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Checks that `topic` can be published to: not empty, at most 65535 bytes, no
/// wildcard or NUL, and no leading `$` (reserved for broker topics) unless allowed.
pub fn check_publish_topic(topic: &str, allow_dollar: bool) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    if topic.len() > 65_535 {
        return Err(format!(
            "the topic is {} bytes long; MQTT allows 65535",
            topic.len()
        ));
    }
    if topic.contains(['+', '#']) {
        return Err(format!("topic {topic:?} contains a wildcard"));
    }
    if topic.contains('\0') {
        return Err(format!("topic {topic:?} contains NUL"));
    }
    if topic.starts_with('$') && !allow_dollar {
        return Err(format!(
            "topic {topic:?} starts with '$', which is reserved for the broker"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_templates_topic_space_is_the_filter_of_what_it_can_render() {
        let space = |template: &str, filter: &str| {
            let f = TopicFilter::parse(filter).unwrap();
            Template::parse(template, f.capture_count())
                .unwrap()
                .topic_space(&f, "r1")
                .as_str()
                .to_string()
        };
        assert_eq!(space("results/{1}/t", "s/+/in"), "results/+/t");
        assert_eq!(space("copy/{route}/{topic}", "s/#"), "copy/+/#");
        assert_eq!(space("x/{2}/y", "a/+/#"), "x/#");
        // Found by fuzzing: literal text that starts like a shared subscription
        // is still the topic it renders to.
        let f = TopicFilter::parse("#").unwrap();
        let t = Template::parse("$share/g/a/b", 1).unwrap();
        let rendered = t
            .render(TemplateContext {
                topic: "x",
                route: "r1",
                captures: &["x".to_string()],
            })
            .unwrap();
        assert!(t.topic_space(&f, "r1").matches(&rendered).is_some());
        // Control characters in literal text are literal text.
        assert_eq!(space("a\u{2}/{1}", "s/+"), "a\u{2}/+");
        assert_eq!(space("a/{1}x/{1}", "s/+"), "a/+/+");
        assert_eq!(space("{1}/b", "s/#"), "#");
        assert_eq!(space("dev-{1}/out", "s/+"), "+/out");
        assert_eq!(
            space("fxbridge/dead-letter/{route}", "s/+"),
            "fxbridge/dead-letter/+"
        );
        assert_eq!(space("fixed/topic", "s/+"), "fixed/topic");
        assert_eq!(TopicFilter::parse("$share/g/a/+").unwrap().topics(), "a/+");
    }

    fn caps(f: &str, t: &str) -> Option<Vec<String>> {
        TopicFilter::parse(f).unwrap().matches(t)
    }

    #[test]
    fn single_level_wildcard_captures_one_level() {
        assert_eq!(caps("a/+/c", "a/b/c"), Some(vec!["b".to_string()]));
        assert_eq!(caps("a/+/c", "a/b/x/c"), None);
        assert_eq!(caps("a/+", "a/"), Some(vec![String::new()]));
        assert_eq!(caps("+/+", "x/y"), Some(vec!["x".into(), "y".into()]));
    }

    #[test]
    fn multi_level_wildcard_captures_the_rest() {
        assert_eq!(caps("a/#", "a/b/c"), Some(vec!["b/c".to_string()]));
        assert_eq!(caps("a/#", "a"), Some(vec![String::new()]));
        assert_eq!(caps("#", "x/y"), Some(vec!["x/y".to_string()]));
        assert_eq!(caps("a/#", "b/c"), None);
    }

    #[test]
    fn literal_filters_match_exactly() {
        assert_eq!(caps("a/b", "a/b"), Some(vec![]));
        assert_eq!(caps("a/b", "a/b/c"), None);
        assert_eq!(caps("a/b", "a"), None);
    }

    #[test]
    fn wildcards_do_not_match_dollar_topics() {
        assert_eq!(caps("#", "$SYS/x"), None);
        assert_eq!(caps("+/x", "$SYS/x"), None);
        assert_eq!(caps("$SYS/#", "$SYS/x"), Some(vec!["x".into()]));
    }

    #[test]
    fn shared_subscriptions_match_on_the_inner_filter() {
        let f = TopicFilter::parse("$share/g1/s/+/t").unwrap();
        assert_eq!(f.share_group(), Some("g1"));
        assert_eq!(f.as_str(), "$share/g1/s/+/t");
        assert_eq!(f.matches("s/d1/t"), Some(vec!["d1".into()]));
        assert!(TopicFilter::parse("$share/g1").is_err());
        assert!(TopicFilter::parse("$share//a").is_err());
    }

    #[test]
    fn malformed_filters_are_rejected() {
        assert!(TopicFilter::parse("").is_err());
        assert!(TopicFilter::parse("a/#/b").is_err());
        assert!(TopicFilter::parse("a/b+").is_err());
        assert!(TopicFilter::parse("a/#x").is_err());
    }

    #[test]
    fn templates_render_captures_topic_and_route() {
        let t = Template::parse("out/{route}/{2}/{1}", 2).unwrap();
        let captures = vec!["a".to_string(), "b".to_string()];
        let ctx = TemplateContext {
            topic: "in/a/b",
            route: "r",
            captures: &captures,
        };
        assert_eq!(t.render(ctx).unwrap(), "out/r/b/a");
        let t = Template::parse("copy/{topic}", 0).unwrap();
        assert_eq!(t.render(ctx).unwrap(), "copy/in/a/b");
        let t = Template::parse("lit/{{x}}", 0).unwrap();
        assert_eq!(t.render(ctx).unwrap(), "lit/{x}");
    }

    #[test]
    fn templates_refuse_bad_placeholders_and_wildcards() {
        assert!(Template::parse("out/{2}", 1)
            .unwrap_err()
            .contains("capture 2"));
        assert!(Template::parse("out/{0}", 1).is_err());
        assert!(Template::parse("out/{nope}", 1)
            .unwrap_err()
            .contains("unknown placeholder"));
        assert!(Template::parse("out/{1", 1).is_err());
        assert!(Template::parse("out/+", 1).is_err());
        assert!(Template::parse("", 0).is_err());
    }

    #[test]
    fn rendered_topics_cannot_become_broker_topics() {
        let t = Template::parse("{1}", 1).unwrap();
        let captures = vec!["$SYS".to_string()];
        let ctx = TemplateContext {
            topic: "x",
            route: "r",
            captures: &captures,
        };
        assert!(t.render(ctx).is_err());
        let empty = vec![String::new()];
        let ctx = TemplateContext {
            topic: "x",
            route: "r",
            captures: &empty,
        };
        assert!(t.render(ctx).unwrap_err().contains("empty"));
    }
}
