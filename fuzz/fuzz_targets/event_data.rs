//! Fuzzes the event-data parsers: the strict urlencoded decoder, the relay's request
//! parser for each kind, and the node's payload and option parsers, checking the
//! invariants in `fuzz/invariants.rs` (also run over the seed corpus by tests/bad_input.rs).
#![no_main]

#[path = "../invariants.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::check(data));
