//! The chat-server listener: HTTP/1.1 connections served on Pingora's listening service.
//!
//! Pingora accepts the connections (its listener sockets, handed over on a zero-downtime
//! upgrade, its worker threads, its shutdown signal); this [`ServerApp`] reads the PROXY
//! header of a plain connection behind a balancer and serves each connection's requests in
//! a task of its own ([`connection`]).

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

mod connection;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::gateway::Gateway;

pub struct Listener {
    gateway: Arc<Gateway>,
    /// Counts the open connections that `limits.max_connections` bounds.
    gate: Arc<crate::edge::Gate>,
}

impl Listener {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Listener {
            gate: gateway.chat_gate(),
            gateway,
        }
    }
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(self: &Arc<Self>, mut io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut peer = io
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let mut initial = Vec::new();
        // Behind a TCP balancer the plain listener reads the PROXY header itself (the TLS
        // listener read it before the handshake, and its peer address is the header's).
        let (proxy_protocol, limit) = {
            let cfg = self.gateway.config();
            (cfg.server.proxy_protocol, cfg.server.client_timeout)
        };
        if proxy_protocol && io.get_ssl_digest().is_none() {
            match crate::edge::proxy::read_header(&mut io, limit).await {
                Ok((source, rest)) => {
                    // Without an address (LOCAL, UNKNOWN) the connection's peer stands.
                    if let Some(source) = source {
                        peer = Some(source.ip());
                    }
                    if peer.is_some_and(|ip| !self.gate.allows_source(ip)) {
                        return None;
                    }
                    initial = rest;
                }
                Err(_) => {
                    self.gate.refuse_proxy_header();
                    return None;
                }
            }
        }
        let handshake = io
            .get_ssl_digest()
            .and_then(|d| d.extension.get::<crate::tls::Handshake>().cloned());
        // The connection lives in a task of its own: the task Pingora spawned to accept it
        // carries its handshake machinery (some 10 KiB) and ends here, instead of staying
        // with every idle keep-alive connection.
        let (app, shutdown) = (self.clone(), shutdown.clone());
        let open = self.gate.opened();
        crate::alloc::opened();
        tokio::spawn(async move {
            app.serve(io, peer, handshake, initial, shutdown).await;
            drop(open);
            crate::alloc::closed();
        });
        None
    }
}

#[cfg(test)]
mod tests;
