//! cargo-fuzz target `fleet_message`: the body is `targets::fleet_message` in
//! fuzz/targets.rs (shared with the stable harness); this file must hold no logic.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::fleet_message(data));
