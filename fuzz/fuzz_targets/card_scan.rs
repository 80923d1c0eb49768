#![no_main]
//! See `cardgate::testkit::fuzz::card_scan` for the properties checked.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cardgate::testkit::fuzz::card_scan(data));
