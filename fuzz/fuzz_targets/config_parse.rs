//! `Config::parse` on any text: it must return (a config or errors with
//! locations inside the text), never panic, hang or blow up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = fxbridge::config::Config::parse(text, "fuzz.yaml", std::path::Path::new("/nonexistent")) {
        // YAML breaks lines at \r\n, \n and a lone \r.
        let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
        for e in &errors.errors {
            if let Some(l) = e.location {
                assert!(l.line <= lines, "line {} of a {lines}-line text", l.line);
            }
        }
    }
});
