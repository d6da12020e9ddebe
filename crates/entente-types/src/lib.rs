//! Entente's identifier types: who is talking, where, and which message.
//!
//! - [`spiffe`]: SPIFFE IDs and the principals built on them, [`AgentId`]
//!   (`spiffe://<td>/agent/<segment>/<name>`) and [`HumanId`] (`spiffe://<td>/human/<name>`).
//! - [`channel`]: channel names and subscription patterns with NATS subject semantics
//!   ([`Channel`], [`ChannelPattern`]).
//! - [`namespace`]: a principal's own system channels, its direct channel (`_direct.S.N`) and
//!   reply namespace (`_reply.S.N.…`).
//! - [`message_id`]: UUIDv7 message IDs that sort by creation time ([`MessageId`]).
//! - [`text`]: which characters of free text shown to people could make it read as something
//!   else ([`text::is_deceptive`]).
//!
//! Every type here is a validated newtype: holding one means its string or bytes already passed
//! the rules documented on its module, so other crates never re-check them. Parsing is strict and
//! never normalizes (an uppercase trust domain is an error, not folded), so the text that was
//! parsed is the text that is displayed. Error messages never echo more than a short, escaped
//! prefix of their input.
//!
//! This crate does no I/O and no async, and it never reads a clock or a random number generator:
//! callers supply those to [`MessageId::from_parts`].
//!
//! ```
//! use entente_types::{AgentId, Channel, ChannelPattern, MessageId, Principal, TrustDomain};
//!
//! let td = TrustDomain::new("example.org")?;
//! let agent = AgentId::new(&td, "research", "summarizer")?;
//! assert_eq!(agent.as_str(), "spiffe://example.org/agent/research/summarizer");
//! assert!(matches!(Principal::parse(agent.as_str())?, Principal::Agent(_)));
//!
//! let pattern = ChannelPattern::parse("team.*.results")?;
//! assert!(pattern.matches(&Channel::parse("team.research.results")?));
//! assert!(!pattern.matches(&Channel::parse("team.research.drafts")?));
//!
//! let id = MessageId::from_parts(1_700_000_000_000, [7; 10]);
//! assert_eq!(id.unix_millis(), 1_700_000_000_000);
//! assert_eq!(id.to_string().parse::<MessageId>()?, id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod channel;
pub mod message_id;
pub mod namespace;
pub mod spiffe;
pub mod text;

pub use channel::{Channel, ChannelError, ChannelPattern, MAX_CHANNEL_LEN, MAX_TOKENS};
pub use message_id::{MessageId, MessageIdError};
pub use spiffe::{
    AgentId, HumanId, IdError, MAX_NAME_LEN, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, NamePart,
    Principal, SpiffeId, TrustDomain,
};
