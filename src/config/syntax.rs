//! Checks on the raw text before the YAML parser sees it, for what the parser
//! handles badly: a UTF-8 byte-order mark (read as a second document), flow
//! collections nested thousands deep (rejected only after a scan that grows
//! with the square of the depth: 17 s for 100,000 `[`), and alias bombs
//! (reported without a location).

use super::locate::Location;

/// Flow collections (`[`, `{`) nested deeper than this are refused.
pub const MAX_DEPTH: usize = 64;

/// `text` without a leading byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Where flow collections first nest deeper than [`MAX_DEPTH`], if they do.
/// Quoted strings and comments are skipped; one pass over the text.
pub fn too_deep(text: &str) -> Option<Location> {
    let mut depth = 0usize;
    let (mut line, mut col) = (1usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut prev = '\n';
    for c in text.chars() {
        col += 1;
        if c == '\n' {
            line += 1;
            col = 0;
            comment = false;
            prev = c;
            continue;
        }
        if comment {
            continue;
        }
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' if prev.is_whitespace() => comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some(Location { line, col });
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    None
}

/// `location`, moved back onto the last line of `text` if it lies past it
/// (YAML breaks lines at `\r\n`, `\n` and a lone `\r`).
pub fn within(text: &str, location: Location) -> Location {
    let normal = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = normal.split('\n').collect();
    if location.line <= lines.len() {
        return location;
    }
    let last = lines.last().map_or(0, |l| l.chars().count());
    Location {
        line: lines.len(),
        col: last + 1,
    }
}

/// The first alias (`*name`) in `text`: where to point when aliases expand
/// to more than the parser allows.
pub fn first_alias(text: &str) -> Option<Location> {
    text.lines().enumerate().find_map(|(i, l)| {
        let col = l
            .char_indices()
            .find(|&(j, c)| c == '*' && (j == 0 || l[..j].ends_with([' ', '[', ',', '{', ':'])))?
            .0;
        Some(Location {
            line: i + 1,
            col: col + 1,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_found_in_one_pass_and_quotes_do_not_count() {
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        assert_eq!(too_deep(&deep), Some(Location { line: 1, col: 68 }));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let fine = format!("a: \"{}\" # {}\nb: [[1]]", "[".repeat(100), "{".repeat(100));
        assert_eq!(too_deep(&fine), None);
    }

    #[test]
    fn a_location_past_the_end_moves_to_the_last_line() {
        let end = Location { line: 2, col: 1 };
        assert_eq!(within("y: {url", end), Location { line: 1, col: 8 });
        assert_eq!(within("a\rb", end), end);
    }

    #[test]
    fn a_bom_is_dropped_and_aliases_are_found() {
        assert_eq!(strip_bom("\u{feff}a: 1"), "a: 1");
        assert_eq!(
            first_alias("a: &x [1]\nb: [*x, *x]"),
            Some(Location { line: 2, col: 5 })
        );
    }
}
