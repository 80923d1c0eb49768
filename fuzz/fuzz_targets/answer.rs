#![no_main]
//! See `cardgate::testkit::fuzz::answer_framing` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cardgate::testkit::fuzz::answer_framing(data));
