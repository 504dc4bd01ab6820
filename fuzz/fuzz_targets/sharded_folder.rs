//! The `sharded_folder` target; the body is `mergescope_fuzz::sharded_folder` (src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: mergescope_fuzz::init("sharded_folder"),
    |data: &[u8]| mergescope_fuzz::sharded_folder(data)
);
