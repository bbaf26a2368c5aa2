//! The config file's JSON Schema (`fusebox schema`, docs/fusebox.schema.json),
//! derived from the raw serde types of `model`, so it names exactly the
//! keys and shapes `fusebox check` parses, with their doc comments as
//! descriptions. Editors' YAML language servers use it to complete and
//! flag keys as you type.
//!
//! Must not: hold a second copy of the key list, or claim more than the
//! structure (ranges, durations' syntax and cross references are
//! `validate`'s, and only `fusebox check` says a file is good).

use super::model::RawConfig;

/// Where the committed copy lives (an editor's `$schema` or
/// `yaml.schemas` setting can point at it).
pub const COMMITTED_PATH: &str = "docs/fusebox.schema.json";

/// The schema as a JSON value (draft-07: the dialect YAML language servers
/// and most validators read).
pub fn config_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<RawConfig>();
    schema.insert("title".to_string(), "fusebox config".into());
    schema.insert(
        "description".to_string(),
        "fusebox's YAML config (docs/configuration.md). Structure only: `fusebox check -c FILE` also checks values and cross references."
            .into(),
    );
    let mut value = schema.to_value();
    drop_null_alternatives(&mut value);
    value
}

/// `anyOf: [X, {type: null}]` (how an optional section comes out) becomes
/// X: a section written as `breaker: ~` means nothing useful, and with the
/// alternative in place a validator reports an error inside the section
/// as "not of type null" instead of naming the bad key.
fn drop_null_alternatives(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let replacement = match map.get("anyOf").and_then(|a| a.as_array()) {
                Some(alts) if alts.len() == 2 => {
                    let is_null = |x: &serde_json::Value| x.get("type").and_then(|t| t.as_str()) == Some("null");
                    match (is_null(&alts[0]), is_null(&alts[1])) {
                        (true, false) => Some(alts[1].clone()),
                        (false, true) => Some(alts[0].clone()),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(serde_json::Value::Object(inner)) = replacement {
                map.remove("anyOf");
                for (k, val) in inner {
                    map.entry(k).or_insert(val);
                }
            }
            map.values_mut().for_each(drop_null_alternatives);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_alternatives),
        _ => {}
    }
}

/// The schema as `fusebox schema` prints it and docs/ keeps it: pretty
/// JSON with a final newline.
pub fn config_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&config_schema()).expect("a JSON value always serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_names_the_keys_and_refuses_unknown_ones() {
        let schema = config_schema();
        let props = &schema["properties"];
        for key in ["listen", "admin", "upstreams", "routes", "defaults", "auth"] {
            assert!(props.get(key).is_some(), "missing top-level key {key}: {schema}");
        }
        assert_eq!(schema["additionalProperties"], serde_json::Value::Bool(false));
        let text = config_schema_text();
        assert!(text.contains("failureThreshold") && text.contains("\"match\""), "camelCase and renamed keys");
        // An optional section is its schema, not "it or null", so a
        // validator names the bad key inside it.
        assert!(props["admin"].get("anyOf").is_none() && props["admin"].get("$ref").is_some(), "{}", props["admin"]);
    }
}
