#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| creme_core::untrusted::dataset(data));
