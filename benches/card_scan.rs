//! The miss path's check of the CRM's card: the one-pass scan against the serde reference
//! it replaced (a UTF-8 pass, a nesting pass and a derived-struct parse), on the card the
//! nginx anchor's mock CRM serves.
//!
//! `cargo bench --bench card_scan`

use cardgate::testkit::{fuzz::serde_card, scan_card};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

/// The anchor's card (`../shared/bench/nginx-anchor.conf`), 388 bytes.
const CARD: &[u8] = br#"{"client":{"id":"124625","name":"Ivanov Ivan Ivanovich","surname":"Ivanov","firstName":"Ivan","patronymic":"Ivanovich","birthDate":"1973-09-02","type":"1","enabled":true,"branch":{"id":7,"extRef":"561","bik":"044525225","name":"Main"},"contacts":{"phone":"+79221234567","email":"ivan@example.com"}},"companyList":[{"id":225760,"name":"LIGA","inn":"7701028744","kpp":"770001001","resident":true}]}"#;

fn card_check(c: &mut Criterion) {
    assert!(scan_card(CARD).is_ok() && serde_card(CARD).is_ok());
    c.bench_function("scan", |b| b.iter(|| scan_card(black_box(CARD)).is_ok()));
    c.bench_function("serde", |b| b.iter(|| serde_card(black_box(CARD)).is_ok()));
}

criterion_group!(benches, card_check);
criterion_main!(benches);
