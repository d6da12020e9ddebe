//! Entente's authorization: Cedar policies over Entente's principals, channels and
//! segments, decided with default deny, sliced at load and cached per connection.
//!
//! - [`SCHEMA`]: the Cedar schema every policy is validated against (strict mode).
//!   Agents are `Agent::"spiffe://…/agent/<segment>/<name>"` in their `Segment` and `Role`s;
//!   channels are `Channel::"orders.eu.created"` in `Namespace::"orders"`,
//!   `Namespace::"orders.eu"` and their owning segment, so `resource in Namespace::"orders"`
//!   is the NATS pattern `orders.>`. The hub itself is `Hub::"hub"`, the resource of `admin`
//!   for its policy administration ([`Resource::Hub`]), in no segment.
//! - [`PolicySet`]: policies parsed from text or files, named (`@id`, or `<source>#<n>`),
//!   validated, and sliced by (action, namespace). Building one either succeeds or returns
//!   a [`LoadError`] naming each problem's file, line, column and policy.
//! - [`Engine`]: the running set behind an atomic swap, and the policy epoch that any
//!   change bumps. A failed load changes nothing.
//! - [`DecisionCache`]: one per connection; (action, resource) → decision for the current
//!   epoch, expiring at the TTL or the end of the earliest grant it saw.
//! - [`Decision`]: allowed or not, the [`Reason`], and the IDs of the policies that decided
//!   it, for allows and denies alike (empty for the default deny).
//! - [`GrantBook`]: time-bound grants, given directly or through just-in-time requests that
//!   M principals other than the requester approve with signed statements
//!   ([`entente_crypto::VerifiedApproval`]); grant names are defined by the policies that
//!   consume them (`@grant("name")`, [`GrantDefinition`]).
//!
//! **Segments.** A request whose principal is an agent and whose resource belongs to
//! another segment is decided by the forbids and by the permits marked `@cross_segment`
//! only; those must name the channels they open in their scope. docs/POLICY.md has the
//! rules and examples.
//!
//! ```
//! use entente_policy::{Action, CacheOptions, DecisionCache, Engine, Facts, PolicySet, Reason, Resource, Subject};
//! use entente_types::{Channel, Principal};
//!
//! let policies = PolicySet::builder()
//!     .source(
//!         "research.cedar",
//!         r#"
//!         @id("research-publishes")
//!         permit (principal in Segment::"research", action == Action::"publish",
//!                 resource in Namespace::"research");
//!
//!         @id("lab-reads-results")
//!         @cross_segment
//!         permit (principal in Segment::"lab", action == Action::"subscribe",
//!                 resource == Channel::"research.results");
//!         "#,
//!     )
//!     .build()?;
//! let engine = Engine::new(policies);
//!
//! let alice = Subject::new(Principal::parse("spiffe://example.org/agent/research/alice")?, ["writer"]);
//! let mut cache = DecisionCache::new(alice, CacheOptions::default());
//! let results = Channel::parse("research.results.daily")?;
//! let now_ms = 1_700_000_000_000;
//!
//! let decision = cache.decide(&engine, Action::Publish, &Resource::Channel(&results), &Facts::default(), now_ms);
//! assert!(decision.allowed);
//! assert_eq!(decision.policies[0].as_str(), "research-publishes");
//!
//! // Another segment: only @cross_segment permits count, and none names this channel.
//! let eve = Subject::new(Principal::parse("spiffe://example.org/agent/lab/eve")?, Vec::<String>::new());
//! let decision = engine.decide(&eve, Action::Publish, &Resource::Channel(&results), &Facts::default(), now_ms);
//! assert!(!decision.allowed);
//! assert_eq!(decision.reason, Reason::NoPermit);
//! assert!(decision.cross_segment && decision.policies.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod approvals;
mod bounds;
mod cache;
mod decision;
mod engine;
mod explain;
mod grants;
mod policies;
mod rate;
mod request;
mod schema;

pub use approvals::ApprovalRecord;
pub use bounds::{MAX_EXPRESSION_DEPTH, MAX_NESTING, MAX_OPERATORS};
pub use cache::{CacheOptions, CacheStats, DecisionCache};
pub use decision::{Decision, PolicyError, PolicyId, Reason};
pub use engine::Engine;
pub use grants::{
    BOOK_VERSION, BookDecodeError, DEFAULT_APPROVALS, DEFAULT_MAX_DURATION_MS, DurationError,
    Expired, Grant, GrantBook, GrantDefinition, GrantEnd, GrantError, GrantId, GrantLimits,
    GrantRequest, GrantedBy, HARD_MAX_GRANTS, HARD_MAX_REQUESTS, IdParseError, MAX_APPROVALS,
    MAX_BOOK_LEN, MAX_CREDENTIALS, MAX_GRANT_DURATION_MS, MAX_GRANT_NAME_LEN, MAX_REASON_LEN,
    MAX_SERIAL_LEN, NewGrant, NewRequest, Outcome, RequestId, RequestState, format_duration,
    is_valid_grant_name, parse_duration,
};
pub use policies::{Effect, LoadError, PolicyInfo, PolicySet, PolicySetBuilder, Problem};
pub use rate::{MAX_RATE_COUNT, MAX_REFILL, Period, PolicyRate};
pub use request::{
    Action, ActiveGrant, Facts, NO_SEGMENT, Resource, Subject, UnknownAction, namespaces,
};
pub use schema::SCHEMA;

/// Entente's base policies (`base.cedar`): agents may send direct messages within their
/// segment. A hub loads them as the source `base` unless configured otherwise.
pub const BASE_POLICIES: &str = include_str!("base.cedar");
