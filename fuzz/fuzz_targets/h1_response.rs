//! cargo-fuzz target `h1_response`: the body is `targets::h1_response` in
//! fuzz/targets.rs (arbitrary upstream bytes into `fusebox::h1`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::h1_response(data));
