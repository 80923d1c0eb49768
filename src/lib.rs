//! cardgate: the gateway between a chat server and the internal system that knows the clients.
//!
//! The modules follow a request: [`server`] runs the Pingora services; [`listener`] owns
//! each chat-server connection and frames its requests with [`http1`]; [`gateway`] answers
//! one request through [`parse`] → [`cache`] → [`dialect`] → [`upstream`] → [`normalise`],
//! and [`respond`] writes the answer. Around them: [`config`], [`keys`] (token hashing),
//! [`guard`] (search brute-force limits), [`error`] (the one error type), [`metrics`],
//! [`accesslog`], [`admin`], and [`mock`], a built-in internal system for demos and tests.

pub mod accesslog;
pub mod admin;
pub mod cache;
pub mod config;
pub mod dialect;
pub mod error;
pub mod gateway;
pub mod guard;
pub mod h1;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod mock;
pub mod normalise;
pub mod parse;
pub mod respond;
pub mod server;
pub mod upstream;
