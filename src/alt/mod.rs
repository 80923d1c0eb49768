//! Off-the-shelf HTTP/1 in place of ours, for one measured comparison (`benches/alt_http.sh`).
//!
//! Built only with the `alt-http` feature and switched on at start by `CARDGATE_ALT_HTTP`
//! (a comma-separated list of `hyper` and `pingora-client`): [`hyper_server`] serves the
//! chat-server side with hyper 1.x on the Pingora stream inside the same `ServerApp`;
//! [`pingora_client`] runs each exchange with the internal system through Pingora's
//! HTTP/1 client session over our own pool. The figures and the decision are in the
//! README's architecture section.

pub mod hyper_server;
pub mod pingora_client;

use std::sync::OnceLock;

fn modes() -> &'static (bool, bool) {
    static MODES: OnceLock<(bool, bool)> = OnceLock::new();
    MODES.get_or_init(|| {
        let v = std::env::var("CARDGATE_ALT_HTTP").unwrap_or_default();
        let has = |m: &str| v.split(',').any(|x| x.trim() == m);
        (has("hyper"), has("pingora-client"))
    })
}

/// Serve the chat-server side with hyper.
pub fn hyper_server() -> bool {
    modes().0
}

/// Talk to the internal system through Pingora's HTTP/1 client session.
pub fn pingora_client() -> bool {
    modes().1
}
