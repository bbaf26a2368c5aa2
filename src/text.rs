//! Text from outside (YAML keys, token claims, request bodies, file names)
//! made safe to print on one line: [`escape_controls`] writes every control
//! character (CR, LF, tab, ESC, C1, DEL) and the Unicode line and paragraph
//! separators as a visible escape, so a value can neither start a forged
//! log or error line nor steer a terminal.
//!
//! The log formatter (`telemetry::logging`) runs every field through it,
//! and config errors (`fusebox check`, a rejected reload) print through it.
//! It must not decide what is logged or change printable text.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with control characters escaped (`\n`, `\r`, `\t`, else
/// `\u{XX}`); borrowed when there is none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// A URL with its password (if any) replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{auth}@{host}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_line_breaks_and_controls_only() {
        assert!(matches!(escape_controls("plain text: ok / é"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\r\nINFO forged"), "a\\r\\nINFO forged");
        assert_eq!(escape_controls("\x1b[31m\t\u{85}\u{2028}\x7f"), "\\u{1b}[31m\\t\\u{85}\\u{2028}\\u{7f}");
    }
}
