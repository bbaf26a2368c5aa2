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
    schema.to_value()
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
    }
}
