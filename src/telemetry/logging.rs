//! tracing subscriber setup: human text or JSON lines, filtered by
//! `RUST_LOG` (default `info`). ANSI colours only when stdout (where
//! logs go) is a terminal and `NO_COLOR` is unset, so `run > file` stays plain text.
//! Called once, from `main`.
//!
//! One event is one line, whatever its fields hold: text lines format
//! their fields through [`OneLineFields`], which escapes control
//! characters (`crate::text`), so a CR/LF in a force reason, a token's
//! `sub`, a service name or a YAML key cannot forge a line; JSON lines are
//! escaped by the JSON encoder. Call sites need no escaping of their own.

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. A second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(colour);
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(OneLineFields::default()).try_init(),
        // Every JSON line names its target (`fusebox::access` for access
        // lines), so a pipeline can route them.
        LogFormat::Json => builder.with_target(true).json().flatten_event(true).try_init(),
    };
}

/// tracing-subscriber's field formatting (message and `key=value`s), with
/// control characters escaped afterwards. (Its own escaping covers ESC and
/// a few others, not CR and LF.)
#[derive(Debug, Default)]
pub struct OneLineFields(DefaultFields);

impl<'writer> FormatFields<'writer> for OneLineFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_fields(Writer::new(&mut line), fields)?;
        writer.write_str(&crate::text::escape_controls(&line))
    }
}
