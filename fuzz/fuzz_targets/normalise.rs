#![no_main]
//! See `cardgate::testkit::fuzz::normalise` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cardgate::testkit::fuzz::normalise(data));
