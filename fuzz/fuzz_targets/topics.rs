//! Topic filters, matching and templates on any input (a filter, a topic and
//! a template, one per line): nothing panics, a match captures one value per
//! wildcard, and a rendered topic is publishable and lies inside the
//! template's topic space (what the output policy allows by default), but for
//! a topic starting with '$' under a wildcard first level (MQTT 4.7.2).
#![no_main]

use fxbridge::topic::{check_publish_topic, Template, TemplateContext, TopicFilter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (Some(filter), Some(topic), Some(template)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(filter) = TopicFilter::parse(filter) else {
        return;
    };
    let Some(captures) = filter.matches(topic) else {
        return;
    };
    assert_eq!(captures.len(), filter.capture_count());
    let Ok(template) = Template::parse(template, filter.capture_count()) else {
        return;
    };
    let route = "r-1";
    let ctx = TemplateContext {
        topic,
        route,
        captures: &captures,
    };
    if let Ok(rendered) = template.render(ctx) {
        assert!(check_publish_topic(&rendered, true).is_ok(), "{rendered:?}");
        let space = template.topic_space(&filter, route);
        // MQTT 4.7.2: a wildcard first level never matches a topic that starts
        // with '$', so such a result needs an allow entry that names it (the
        // safe side). Everything else the template renders is in its space.
        let first_is_wildcard = space.as_str().starts_with(['+', '#']);
        assert!(
            space.matches(&rendered).is_some() || (rendered.starts_with('$') && first_is_wildcard),
            "{rendered:?} is outside {:?}",
            space.as_str()
        );
    }
});
