//! Fuzz target: see `csv` in fuzz/properties.rs for what it checks.
#![no_main]
#[path = "../properties.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    properties::csv(bytes);
});
