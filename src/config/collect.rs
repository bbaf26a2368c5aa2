//! Every structural error of a file in one pass: serde stops at the first
//! unknown key or wrong type, so after one the file is read again as a YAML
//! tree, the offending key is taken out of the tree, and the tree is read
//! again, until it reads or nothing more can be taken out. A file with ten
//! mistakes costs its operator one round of `fusebox check`, not ten.
//!
//! Must not: decide which keys or types are valid (that is `model`'s serde
//! types), word an error (that is `keys`), or hand out a `Config` built from
//! a pruned tree: a file with a structural error is refused whole.

use serde_path_to_error::Segment;
use serde_yaml::Value;

use super::{keys, locate, model, ConfigError};

/// More than this many structural errors are not worth a longer list.
const MAX_ERRORS: usize = 100;

/// What reading the file as the model gave.
pub struct Collected {
    /// Every structural error found, in the order serde met them.
    pub errors: Vec<ConfigError>,
    /// The model read from the pruned tree, when pruning made it readable;
    /// only ever used to find the value errors of the rest of the file.
    pub pruned: Option<model::RawConfig>,
    /// Key paths taken out of the tree (errors under them are consequences).
    pub removed: Vec<String>,
}

/// Reads `text` (already `${NAME}`-expanded) as the model; the first error
/// is `first`, the error reading the text gave.
pub fn after_first(text: &str, first: serde_path_to_error::Error<serde_yaml::Error>) -> Collected {
    let mut out = Collected { errors: Vec::new(), pruned: None, removed: Vec::new() };
    let mut segments = segments(first.path());
    let mut unknown = unknown_key(first.inner());
    out.errors.push(keys::structural_error(first));
    // A YAML syntax error leaves no tree to prune.
    let Ok(mut tree) = serde_yaml::from_str::<Value>(text) else {
        return out;
    };
    loop {
        if out.errors.len() >= MAX_ERRORS {
            return out;
        }
        let Some(removed) = remove(&mut tree, &segments, unknown.as_deref()) else {
            return out;
        };
        out.removed.push(removed);
        match serde_path_to_error::deserialize::<_, model::RawConfig>(tree.clone()) {
            Ok(raw) => {
                out.pruned = Some(raw);
                return out;
            }
            Err(e) => {
                segments = segments_of(&e);
                unknown = unknown_key(e.inner());
                let mut error = keys::structural_error(e);
                // A missing key we took out ourselves is no news.
                if error.message.starts_with("missing field") && out.removed.iter().any(|r| r.starts_with(&error.path)) {
                    return out;
                }
                if error.line.is_none() {
                    if let Some((line, column)) = locate::locate(text, &error.path) {
                        error.line = Some(line);
                        error.column = Some(column);
                    }
                }
                if out.errors.contains(&error) {
                    return out;
                }
                out.errors.push(error);
            }
        }
    }
}

fn segments_of(e: &serde_path_to_error::Error<serde_yaml::Error>) -> Vec<Step> {
    segments(e.path())
}

/// One step of a key path into the tree.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// The key an "unknown field" error names.
fn unknown_key(e: &serde_yaml::Error) -> Option<String> {
    let message = e.to_string();
    let at = message.find("unknown field `")? + "unknown field `".len();
    let rest = &message[at..];
    Some(rest[..rest.find('`')?].to_string())
}

/// Takes the value at `path` out of the tree (or, for an unknown key, that
/// key out of the map at `path` when `path` stops at its map), and returns
/// the dotted path removed. None when nothing could be taken out.
fn remove(tree: &mut Value, path: &[Step], unknown: Option<&str>) -> Option<String> {
    let mut path = path.to_vec();
    if let Some(key) = unknown {
        if path.last() != Some(&Step::Key(key.to_string())) {
            path.push(Step::Key(key.to_string()));
        }
    }
    let (last, parents) = path.split_last()?;
    let mut node = tree;
    for step in parents {
        node = child(node, step)?;
    }
    let removed = match (node, last) {
        (Value::Mapping(map), Step::Key(key)) => {
            let k = map.keys().find(|k| key_matches(k, key))?.clone();
            map.remove(&k)
        }
        (Value::Sequence(seq), Step::Index(i)) if *i < seq.len() => Some(seq.remove(*i)),
        (Value::Tagged(tagged), step) => {
            return remove(&mut tagged.value, std::slice::from_ref(step), None).map(|_| dotted(&path));
        }
        _ => None,
    };
    removed.map(|_| dotted(&path))
}

fn child<'a>(node: &'a mut Value, step: &Step) -> Option<&'a mut Value> {
    match (node, step) {
        (Value::Mapping(map), Step::Key(key)) => {
            let k = map.keys().find(|k| key_matches(k, key))?.clone();
            map.get_mut(&k)
        }
        (Value::Sequence(seq), Step::Index(i)) => seq.get_mut(*i),
        (Value::Tagged(tagged), step) => child(&mut tagged.value, step),
        _ => None,
    }
}

fn key_matches(k: &Value, key: &str) -> bool {
    match k {
        Value::String(s) => s == key,
        Value::Number(n) => n.to_string() == key,
        Value::Bool(b) => b.to_string() == key,
        _ => false,
    }
}

fn dotted(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    #[test]
    fn every_structural_error_of_a_file_in_one_pass() {
        let text = "\
listen: 127.0.0.1:8080
lisen: 1
upstreams:
  api:
    endpoints: [http://127.0.0.1:1]
    breaker:
      failureTreshold: 5
      resetTimeout: [1]
      halfOpenRequests: -2
    healthchek: {}
routes:
  - match: { pathPrefix: / }
    upstream: api
    bogus: true
";
        let err = parse(text).expect_err("five mistakes");
        let messages: Vec<String> = err.errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        assert_eq!(err.errors.len(), 6, "{messages:#?}");
        let all = messages.join("\n");
        for needle in ["lisen", "failureTreshold", "resetTimeout", "halfOpenRequests", "healthchek", "bogus"] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        assert!(err.errors.iter().all(|e| e.line.is_some()), "every error has a line: {:#?}", err.errors);
        let lines: Vec<usize> = err.errors.iter().filter_map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 7, 8, 9, 10, 14], "{:#?}", err.errors);
    }

    #[test]
    fn value_errors_elsewhere_are_reported_with_the_structural_ones() {
        let text = "\
upstreams:
  api:
    endpoints: [http://127.0.0.1:1]
    breakr: {}
routes:
  - match: { pathPrefix: / }
    upstream: nowhere
";
        let err = parse(text).expect_err("two mistakes");
        let all = format!("{err}");
        assert!(all.contains("breakr"), "{all}");
        assert!(all.contains("nowhere"), "{all}");
    }

    #[test]
    fn a_syntax_error_is_one_error() {
        let err = parse("upstreams: {\n  api: [\n").expect_err("broken YAML");
        assert_eq!(err.errors.len(), 1, "{err}");
    }
}
