//! The `layout_names` target; the body is `mergescope_fuzz::layout_names` (src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: mergescope_fuzz::init("layout_names"),
    |data: &[u8]| mergescope_fuzz::layout_names(data)
);
