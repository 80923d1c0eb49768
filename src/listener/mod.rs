//! The chat-server listener: HTTP/1.1 connections served on Pingora's listening service.
//!
//! Pingora accepts the connections (its listener sockets, handed over on a zero-downtime
//! upgrade, its worker threads, its shutdown signal); this [`ServerApp`] counts each one
//! against `limits.max_connections`, brings it to its first request
//! ([`crate::edge::opening`]: PROXY header, TLS handshake) and serves its requests in a
//! task of its own ([`connection`]).

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

use crate::edge::opening::{Opened, Opening};
use crate::error::GatewayError;
use crate::gateway::Gateway;

pub struct Listener {
    gateway: Arc<Gateway>,
    /// Counts the open connections that `limits.max_connections` bounds.
    gate: Arc<crate::edge::Gate>,
    /// PROXY header and TLS handshake, before the first request.
    opening: Opening,
}

impl Listener {
    pub fn new(gateway: Arc<Gateway>, opening: Opening) -> Self {
        Listener {
            gate: gateway.chat_gate(),
            gateway,
            opening,
        }
    }
}

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // Counted from here to its close, through the PROXY header and the TLS handshake.
        let open = self.gate.try_open()?;
        crate::alloc::opened();
        // The connection lives in a task of its own: the task Pingora spawned to accept it
        // carries its accept machinery and ends here, instead of staying with every idle
        // keep-alive connection.
        let (app, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move {
            app.open(io, shutdown).await;
            drop(open);
            crate::alloc::closed();
        });
        None
    }
}

impl Listener {
    /// Bring a connection to its first request, then serve it.
    async fn open(&self, io: Stream, shutdown: ShutdownWatch) {
        let (proxy_protocol, limit) = {
            let cfg = self.gateway.config();
            (cfg.server.proxy_protocol, cfg.server.client_timeout)
        };
        // Boxed: what the opening needs (the handshake's state is large) is gone once the
        // connection serves, instead of staying in every connection's task.
        let opened = Box::pin(self.opening.open(io, proxy_protocol, limit)).await;
        let Some((opened, peer)) = opened else {
            return;
        };
        match opened {
            Opened::Plain(io) => self.serve(io, peer, None, None, shutdown).await,
            Opened::Tls(io, handshake) => self.serve(io, peer, Some(handshake), None, shutdown).await,
            Opened::PlainOnTls(io) => {
                let refusal = Some(GatewayError::PlainHttpOnTlsPort);
                self.serve(io, peer, None, refusal, shutdown).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
