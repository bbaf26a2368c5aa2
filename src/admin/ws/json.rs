//! The pieces of the state WebSocket's messages: `seq` spliced into a
//! rendering shared by every session, one service's entry and one
//! transition (both from `admin::view`, the wire shapes the API shares),
//! and the server time of a `pong`.
//!
//! It must not send or decide anything: it turns values into JSON.

use std::time::SystemTime;

use serde_json::Value;

use crate::breaker::{Snapshot, Transition};
use crate::clock;
use crate::runtime::upstream::Upstream;

/// `text` (a JSON object) with `"seq": seq` added as its last member.
pub(super) fn with_seq(text: &str, seq: u64) -> String {
    let body = text.trim_end().strip_suffix('}').unwrap_or(text);
    let mut message = String::with_capacity(body.len() + 32);
    message.push_str(body);
    if !body.trim_end().ends_with('{') {
        message.push(',');
    }
    message.push_str("\"seq\":");
    message.push_str(&seq.to_string());
    message.push('}');
    message
}

pub(super) fn epoch_millis() -> u64 {
    clock::unix_millis(SystemTime::now())
}

/// One service's entry (`view::ServiceEntry`: the seeds' fields plus what
/// the dashboard shows: mode, when an open circuit goes half-open, the
/// trip rule, the last transition, the endpoints).
pub(super) fn entry(u: &Upstream, s: &Snapshot, now: std::time::Instant) -> Value {
    crate::admin::view::ServiceEntry::of(u, s, now).to_json()
}

pub(super) fn transition_json(t: &Transition) -> Value {
    crate::admin::view::TransitionView::of(t).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seq_is_spliced_into_a_shared_rendering() {
        let shared = json!({ "type": "service:update", "data": { "x": [1, 2] } }).to_string();
        for seq in [1, 42, u64::MAX] {
            let v: Value = serde_json::from_str(&with_seq(&shared, seq)).expect("still JSON");
            assert_eq!(v["seq"], seq);
            assert_eq!(v["type"], "service:update");
            assert_eq!(v["data"]["x"], json!([1, 2]));
        }
        let v: Value = serde_json::from_str(&with_seq("{}", 7)).expect("still JSON");
        assert_eq!(v, json!({ "seq": 7 }));
    }
}
