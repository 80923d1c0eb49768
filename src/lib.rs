//! cardgate: the gateway between a chat server and the internal system that knows the clients.
//!
//! The modules follow a request: [`server`] runs the Pingora services; [`listener`] owns
//! each chat-server connection and frames its requests with [`h1`]; [`gateway`] answers
//! one request through [`parse`] → [`cache`] → [`dialect`] → [`upstream`] → [`normalise`],
//! and [`respond`] writes the answer. Around them: [`config`], [`keys`] (token hashing),
//! [`edge`] (allowlists, connection and per-source limits), [`correlation`] (request
//! ids, trace context), [`guard`] (search brute-force limits),
//! [`error`] (the one error type), [`metrics`], [`logs`], [`admin`]; the process's life in
//! [`signals`], [`reload`], [`supervise`], [`upgrade`] and [`rundir`]; and, with the default `mock`
//! feature, `mock`: a built-in internal system for demos and tests.
//!
//! Two modules are public: [`cli`], the command line the executable runs, and
//! [`testkit`], what the integration tests and benchmarks reach inside.

// The modules that input from the chat server or the CRM reaches (dialect, edge, guard, h1,
// listener, normalise, parse, respond, tls, upstream) deny, each at its top, `unwrap`,
// `expect`, indexing that can panic and unchecked arithmetic outside their tests.
pub(crate) mod dialect;
pub(crate) mod edge;
pub(crate) mod guard;
pub(crate) mod h1;
pub(crate) mod listener;
pub(crate) mod normalise;
pub(crate) mod parse;
pub(crate) mod respond;
pub(crate) mod tls;
pub(crate) mod upstream;

pub(crate) mod admin;
pub mod alloc;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod config;
pub(crate) mod correlation;
pub(crate) mod error;
pub(crate) mod gateway;
pub(crate) mod keys;
pub(crate) mod logs;
pub(crate) mod metrics;
#[cfg(feature = "mock")]
pub(crate) mod mock;
pub(crate) mod reload;
pub(crate) mod rundir;
pub(crate) mod server;
pub(crate) mod shared;
pub(crate) mod signals;
pub(crate) mod supervise;
pub mod testkit;
pub(crate) mod upgrade;
