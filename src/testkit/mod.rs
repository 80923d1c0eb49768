//! What the integration tests and benchmarks reach inside the gateway, and nothing else.
//!
//! The integration tests run the real executable and talk HTTP to it; from the library
//! they need only the mock's fixtures (to know what a card must look like). The
//! benchmarks time the hot path's parts one by one: request framing, routing, the token
//! hash, the card cache and the answer writer; and, on the miss path, the check of the
//! CRM's card against the serde reference it replaced.

pub use crate::cache::{entry_weight, CardCache, ENTRY_OVERHEAD};
pub use crate::config::{CacheSection, SearchSection};
pub use crate::guard::{SearchGuard, STEP_BYTES};
pub use crate::h1::server::{parse_head, Request};
pub use crate::keys::TokenHasher;
pub use crate::normalise::scan::card as scan_card;
pub use crate::normalise::{Card, SearchAnswer};
pub use crate::parse::{route, search_params, Route};
pub use crate::respond::{write as write_answer, Answer, Body, Delivery};

/// The built-in mock CRM's fixtures.
#[cfg(feature = "mock")]
pub mod mock {
    pub use crate::mock::bearer::user_id as bearer_user_id;
    pub use crate::mock::gigma::PASSWORD as GIGMA_PASSWORD;
    pub use crate::mock::{card, SEARCH_CODE};
}

pub mod fuzz;
