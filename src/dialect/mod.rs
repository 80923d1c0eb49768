//! Dialects: how the gateway asks one kind of internal system for what the chat server wants.
//!
//! The gateway speaks the Auth API to the chat server whatever the internal system is; a
//! [`Dialect`] turns that into the internal system's own request(s) through [`Upstream`] and
//! maps its answer to a [`Card`] or a [`GatewayError`]. Adding a dialect is a new module and
//! a new `DialectKind` in the config.

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

pub mod bearer;
pub mod gigma;
pub mod iq;

use async_trait::async_trait;

use crate::config::{Config, DialectKind};
use crate::error::GatewayError;
use crate::normalise::{Card, SearchAnswer};
use crate::parse::{SearchRequest, Token};
use crate::upstream::{CallRecord, Upstream};

#[async_trait]
pub trait Dialect: Send + Sync {
    /// Ask the internal system for the card of `token`.
    async fn fetch_card(
        &self,
        up: &Upstream,
        token: &Token,
        record: &CallRecord,
    ) -> Result<Card, GatewayError>;

    /// Run one step of the Search client API. Dialects without one keep this default.
    async fn search(
        &self,
        _up: &Upstream,
        _req: &SearchRequest,
        _record: &CallRecord,
    ) -> Result<SearchAnswer, GatewayError> {
        Err(GatewayError::SearchNotSupported)
    }

    /// End the session behind `token` when its card is purged; true if one was ended.
    /// Dialects without sessions keep this default.
    async fn end_session(
        &self,
        _up: &Upstream,
        _token: &Token,
        _record: &CallRecord,
    ) -> Result<bool, GatewayError> {
        Ok(false)
    }
}

/// An `Authorization: Bearer <token>` value, marked sensitive.
pub fn bearer_header(token: &Token) -> Result<http::HeaderValue, GatewayError> {
    let mut value = Vec::with_capacity(token.as_bytes().len().saturating_add(7));
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token.as_bytes());
    let mut value = http::HeaderValue::from_bytes(&value)
        .map_err(|_| GatewayError::BadRequest("token cannot be sent in a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A person as the internal system names them, for dialects that build cards themselves.
pub struct Person {
    pub id: String,
    pub surname: String,
    pub firstname: String,
    pub patronymic: String,
    /// The full name when the system gives one; else the three parts, joined.
    pub name: Option<String>,
}

impl Person {
    /// The card's `client` object up to `enabled`, in the Auth API's member order.
    pub fn client(self, client_type: &str) -> serde_json::Value {
        let name = self.name.filter(|n| !n.is_empty()).unwrap_or_else(|| {
            [&self.surname, &self.firstname, &self.patronymic]
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        });
        serde_json::json!({
            "id": self.id,
            "name": name,
            "surname": self.surname,
            "firstname": self.firstname,
            "patronymic": self.patronymic,
            "type": client_type,
            "enabled": true,
        })
    }
}

/// The dialect configured in `upstream.dialect`.
pub fn from_config(cfg: &Config, shared: Option<std::sync::Arc<crate::shared::Shared>>) -> Box<dyn Dialect> {
    match cfg.upstream.dialect {
        DialectKind::Iq => Box::new(iq::Iq::new(&cfg.upstream)),
        DialectKind::Gigma => Box::new(gigma::Gigma::new(&cfg.upstream).with_shared(shared)),
        DialectKind::Bearer => Box::new(bearer::Bearer::new(&cfg.upstream)),
    }
}
