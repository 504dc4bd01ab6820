//! The `recipe` target; the body is `mergescope_fuzz::recipe` (src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: mergescope_fuzz::init("recipe"),
    |data: &[u8]| mergescope_fuzz::recipe(data)
);
