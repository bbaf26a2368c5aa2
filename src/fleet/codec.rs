//! What members of a fleet say to each other through Redis, and the one
//! decoder of what comes back: JSON with a version, at most
//! [`MAX_MESSAGE`] bytes, every string bounded. Anything else (garbled,
//! oversized, another version, a hostile value) is an error the caller
//! counts and drops.
//!
//! Must not: touch Redis or a circuit; decoding never panics and never
//! allocates more than the bounded input.

use serde::{Deserialize, Serialize};

/// The protocol version this fusebox speaks.
pub const VERSION: u32 = 1;
/// The largest message read or written.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The longest text field (a reason, a trip's words).
pub const MAX_TEXT: usize = 1024;

/// One message on the fleet's channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    /// The member that sent it.
    pub member: String,
    #[serde(flatten)]
    pub body: Message,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Message {
    /// A circuit of the sender opened on its own evidence.
    Opened { circuit: String, text: String, at_ms: i64 },
    /// An operator's action taken on the sender, for every member.
    Action(Action),
    /// The fleet's one trial of a recovery decided on the sender.
    Trial { circuit: String, closed: bool, text: String },
}

/// An operator action that applies fleet-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub circuit: String,
    /// `force` or `reset`.
    pub kind: String,
    /// For `force`: forced-open, forced-closed, metrics-only or auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    pub reason: String,
    /// Who took it (the token's subject).
    pub by: String,
    pub at_ms: i64,
    /// For `config`: the runtime override's keys (the admin PUT body); none
    /// removes the override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// Why a message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes, more than {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("not a fleet message: {0}")]
    Garbled(String),
    #[error("protocol version {0}, this fusebox speaks {VERSION}")]
    Version(u32),
    #[error("a field is too long or empty")]
    Field,
}

impl Envelope {
    pub fn new(member: &str, body: Message) -> Envelope {
        Envelope { v: VERSION, member: member.to_string(), body }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The one decoder of what Redis hands back.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        // The version first: a later protocol may change the rest.
        #[derive(Deserialize)]
        struct Versioned {
            v: u32,
        }
        let versioned: Versioned = serde_json::from_slice(bytes).map_err(|e| DecodeError::Garbled(e.to_string()))?;
        if versioned.v != VERSION {
            return Err(DecodeError::Version(versioned.v));
        }
        let e: Envelope = serde_json::from_slice(bytes).map_err(|e| DecodeError::Garbled(e.to_string()))?;
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_TEXT;
        let fields_ok = ok(&e.member)
            && match &e.body {
                Message::Opened { circuit, text, .. } | Message::Trial { circuit, text, .. } => ok(circuit) && text.len() <= MAX_TEXT,
                Message::Action(a) => {
                    ok(&a.circuit)
                        && ok(&a.kind)
                        && a.reason.len() <= MAX_TEXT
                        && a.by.len() <= MAX_TEXT
                        && a.mode.as_ref().is_none_or(|m| ok(m))
                }
            };
        if !fields_ok {
            return Err(DecodeError::Field);
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_must() {
        let e = Envelope::new("pod-a", Message::Opened { circuit: "payments".into(), text: "5 consecutive failures".into(), at_ms: 7 });
        assert_eq!(Envelope::decode(&e.encode()), Ok(e));
        let a = Envelope::new(
            "pod-b",
            Message::Action(Action {
                circuit: "api/search".into(),
                kind: "force".into(),
                mode: Some("forced-open".into()),
                ttl_ms: Some(60_000),
                reason: "incident".into(),
                by: "ops".into(),
                at_ms: 1,
                config: None,
            }),
        );
        assert_eq!(Envelope::decode(&a.encode()), Ok(a));
        assert!(matches!(Envelope::decode(b"\xff\x00garbage"), Err(DecodeError::Garbled(_))));
        assert!(matches!(Envelope::decode(br#"{"v":2,"member":"x","type":"opened"}"#), Err(DecodeError::Version(2))));
        assert!(matches!(Envelope::decode(&vec![b' '; MAX_MESSAGE + 1]), Err(DecodeError::TooLarge(_))));
        let long = format!(r#"{{"v":1,"member":"{}","type":"trial","circuit":"a","closed":true,"text":""}}"#, "m".repeat(MAX_TEXT + 1));
        assert_eq!(Envelope::decode(long.as_bytes()), Err(DecodeError::Field));
        assert!(Envelope::decode(br#"{"v":1,"member":"x","type":"nope"}"#).is_err());
        assert!(Envelope::decode(br#"{"v":1,"member":"","type":"trial","circuit":"a","closed":true,"text":""}"#).is_err());
    }

    #[test]
    fn no_input_panics() {
        let mut rng = fastrand::Rng::with_seed(3);
        let sample = Envelope::new("pod", Message::Trial { circuit: "c".into(), closed: false, text: "t".into() }).encode();
        for _ in 0..20_000 {
            let mut bytes = sample.clone();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
            let _ = Envelope::decode(&bytes);
        }
    }
}
