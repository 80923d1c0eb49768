//! HTTP/1.1 on the wire, for both sides of the gateway, and nothing above it.
//!
//! [`server`] finds requests in a connection's read buffer (the chat-server side), and
//! [`target`] judges their targets and `Host`; [`client`] reads the internal system's
//! answers; [`common`] holds what both share: the framing fields and [`FramingError`], the
//! wire-level refusal; [`chunked`] decodes chunked bodies for both. This layer never builds
//! a gateway answer: [`crate::error`] maps a `FramingError` to a status
//! and `errorCode` once, for each side.

// Input from the chat server or the CRM reaches this module: nothing here may panic on it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod chunked;
pub mod client;
pub mod common;
pub mod server;
mod target;

pub use chunked::ChunkedDecoder;
pub use common::FramingError;
