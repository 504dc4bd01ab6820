//! The `safetensors_file` target; the body is `mergescope_fuzz::safetensors_file` (src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: mergescope_fuzz::init("safetensors_file"),
    |data: &[u8]| mergescope_fuzz::safetensors_file(data)
);
