//! `${NAME}` expansion: each reference in the config text is replaced by
//! the environment variable's value before the YAML is parsed (`${NAME:-x}`
//! gives `x` when the variable is unset or empty, as in a shell or
//! docker compose), and the bound on how large that may make the text.
//!
//! Must not: know of any key or parse YAML; expand inside a comment; let
//! an unset or oversized variable through as an empty value (each is an
//! error at its line and column).

use super::locate::comment_start;
use super::{ConfigError, MAX_FILE_BYTES};

/// The largest a config text may grow to through `${NAME}` expansions.
const MAX_EXPANDED_BYTES: usize = 4 * MAX_FILE_BYTES;

/// Replaces `${NAME}` with the environment value; comments are left alone.
pub fn expand_env(text: &str, errors: &mut Vec<ConfigError>) -> String {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let code_end = comment_start(line).unwrap_or(line.len());
        let (code, comment) = line.split_at(code_end);
        let mut rest = code;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let (name, fallback) = match after[..end].split_once(":-") {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (&after[..end], None),
            };
            let value = match (std::env::var(name), fallback) {
                (Ok(v), Some(f)) if v.is_empty() => Ok(f.to_string()),
                (Err(_), Some(f)) => Ok(f.to_string()),
                (v, _) => v,
            };
            match value {
                Ok(value) if value.len() > MAX_FILE_BYTES || out.len() + value.len() > MAX_EXPANDED_BYTES => errors.push(ConfigError {
                    path: String::new(),
                    line: Some(n + 1),
                    column: Some(code.len() - rest.len() + start + 1),
                    message: format!("environment variable `{name}` is too large to expand (at most 1 MiB each, 4 MiB in all)"),
                }),
                Ok(value) => out.push_str(&value),
                Err(_) => errors.push(ConfigError {
                    path: String::new(),
                    line: Some(n + 1),
                    column: Some(code.len() - rest.len() + start + 1),
                    message: format!("environment variable `{name}` is not set (`${{{name}:-}}` would leave it empty)"),
                }),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::expand_env;

    #[test]
    fn a_default_stands_in_for_an_unset_or_empty_variable() {
        let mut errors = Vec::new();
        let out = expand_env("member: ${FUSEBOX_TEST_SURELY_UNSET_42:-pod-x}\nname: '${FUSEBOX_TEST_SURELY_UNSET_42:-}'\n", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out, "member: pod-x\nname: ''\n");
        let out = expand_env("a: ${FUSEBOX_TEST_SURELY_UNSET_42}\n", &mut errors);
        assert_eq!(errors.len(), 1, "{out}");
        assert!(errors[0].message.contains(":-"), "{}", errors[0].message);
    }
}
