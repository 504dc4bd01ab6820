//! The `config_json` target; the body is `mergescope_fuzz::config_json` (src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: mergescope_fuzz::init("config_json"),
    |data: &[u8]| mergescope_fuzz::config_json(data)
);
