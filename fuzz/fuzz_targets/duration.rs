//! cargo-fuzz target `duration`: the body is `targets::duration` in fuzz/targets.rs
//! (shared with the stable harness); this file must hold no logic.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::duration(data));
