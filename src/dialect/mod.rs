//! Dialects: how the gateway asks one kind of internal system for what the chat server wants.
//!
//! The gateway speaks the Auth API to the chat server whatever the internal system is; a
//! [`Dialect`] turns that into the internal system's own request(s) through [`Upstream`] and
//! maps its answer to a [`Card`] or a [`GatewayError`]. Adding a dialect is a new module and
//! a new `DialectKind` in the config.

pub mod iq;

use async_trait::async_trait;

use crate::config::{Config, DialectKind};
use crate::error::GatewayError;
use crate::normalise::{Card, SearchAnswer};
use crate::parse::{SearchRequest, Token};
use crate::upstream::{Trace, Upstream};

#[async_trait]
pub trait Dialect: Send + Sync {
    /// Ask the internal system for the card of `token`.
    async fn fetch_card(&self, up: &Upstream, token: &Token, trace: &Trace) -> Result<Card, GatewayError>;

    /// Run one step of the Search client API. Dialects without one keep this default.
    async fn search(
        &self,
        _up: &Upstream,
        _req: &SearchRequest,
        _trace: &Trace,
    ) -> Result<SearchAnswer, GatewayError> {
        Err(GatewayError::SearchNotSupported)
    }
}

/// The dialect configured in `upstream.dialect`.
pub fn from_config(cfg: &Config) -> Box<dyn Dialect> {
    match cfg.upstream.dialect {
        DialectKind::Iq => Box::new(iq::Iq::new(&cfg.upstream)),
    }
}
