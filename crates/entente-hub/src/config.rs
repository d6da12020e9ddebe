//! The hub's configuration.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use entente_keystore::KeyStore;
use entente_policy::GrantLimits;
use entente_store::stream::MAX_ENTRY_LEN;
use entente_types::{MAX_CHANNEL_LEN, Principal};
use entente_wire::Limits;

use crate::HubError;
use crate::anomaly::AnomalyConfig;
use crate::audit::AuditConfig;
use crate::datakeys::SEAL_OVERHEAD;
use crate::durable::StreamConfig;
use crate::limits::RateLimits;
use crate::notify::Webhook;
use crate::otlp::OtlpExport;

/// The largest `limits.max_frame_bytes` durable channels can keep every entry of, 64 MiB less
/// 297 bytes. A durable entry holds up to a frame's worth of sender keys and batches after its
/// channel's name (a 2-byte length and at most [`MAX_CHANNEL_LEN`] bytes), and is sealed at
/// rest ([`SEAL_OVERHEAD`] bytes more: key version, nonce, tag); its dead letter is its
/// sequence (8 bytes) and the sealed entry. Each must fit one stream entry
/// ([`MAX_ENTRY_LEN`]): a larger one would fail the stream's append, and with it the stream,
/// until the hub restarts.
pub(crate) const MAX_DURABLE_FRAME_BYTES: usize =
    MAX_ENTRY_LEN - DEAD_LETTER_SEQ_LEN - SEAL_OVERHEAD - 2 - MAX_CHANNEL_LEN;

/// What a dead letter adds before the entry as stored: its sequence.
const DEAD_LETTER_SEQ_LEN: usize = 8;

/// Everything [`Hub::start`](crate::Hub::start) needs besides the CA and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Address to listen on. Default `127.0.0.1:0` (an ephemeral loopback port).
    pub listen: SocketAddr,
    /// Decoding bounds for every inbound frame; `max_frame_bytes` also caps each gRPC message.
    /// With durable channels, `max_frame_bytes` may be at most 67 108 567 (64 MiB less 297
    /// bytes), so that every entry they store, and its dead letter, fits a stream entry.
    pub limits: Limits,
    /// The initial policy set: Cedar sources, `(name, text)` (docs/POLICY.md). The hub runs
    /// them, with its base policies ([`entente_policy::BASE_POLICIES`], source `base`), when
    /// the store holds no policy set, and stores them; otherwise the stored set (the last one
    /// loaded) runs and these are not read. Default none: only the base policies (agents may
    /// send direct messages within their segment) and the structural rules (own `_direct`
    /// and `_reply` namespaces) allow anything.
    pub policies: Vec<(String, String)>,
    /// Run [`policies`](Self::policies) (and store them) even if the store holds a policy
    /// set: the way out when the stored set no longer loads. Default false.
    pub replace_stored_policies: bool,
    /// Bounds of the grant book: how many grants and requests it holds, how long a
    /// just-in-time request waits for approvals (default one hour), how long a decided one is
    /// kept. Default [`GrantLimits::default`].
    pub grant_limits: GrantLimits,
    /// Settings that weaken security, for measurement only ([`danger`](crate::danger)).
    /// Default: none.
    pub danger: crate::danger::Danger,
    /// Frames each session's outbound queue holds before publishers wait. Default 1024.
    pub queue_capacity: usize,
    /// Bytes of delivered batches each session's outbound queue holds before publishers
    /// wait (a batch larger than this still goes, alone). What a subscriber's messages wait
    /// behind is this, the HTTP/2 window and the subscriber's own buffer. Default 1 MiB.
    pub queue_bytes: usize,
    /// How long a publisher waits on a full subscriber queue before that subscriber is
    /// disconnected as a slow consumer; and how long a framed connection whose session is
    /// over may take to write what the session left queued before it is closed. Default 5 s.
    pub slow_consumer_timeout: Duration,
    /// Time allowed for the TLS handshake of a new connection. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long a mutual-TLS connection may stay idle (no session open, no call under way)
    /// before the hub closes it. The SDK opens its session as it connects, so only a client
    /// that holds a connection without using it meets this. Default 60 s.
    pub idle_timeout: Duration,
    /// Most subscriptions one session may hold. Default 1024.
    pub max_subscriptions: usize,
    /// Most concurrent gRPC streams (sessions) on one connection. Default 4.
    pub max_streams_per_connection: u32,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP; docs/THREAT_MODEL.md):
    /// counts by channel class and limit, never a principal or a channel. Default `None`: not
    /// served. Keep it on loopback or behind an authenticating scraper.
    pub metrics_listen: Option<SocketAddr>,
    /// Rate limits per agent and per channel class ([`RateLimits`]). Default: 100 000
    /// messages and 64 MiB per second per agent.
    pub rate_limits: RateLimits,
    /// Anomaly detection, throttling and quarantine (docs/ANOMALY.md).
    pub anomaly: AnomalyConfig,
    /// Where each quarantine imposed or lifted is announced, as a JSON POST. Default `None`:
    /// logged and audited only.
    pub quarantine_webhook: Option<Webhook>,
    /// Where to push the hub's metrics with OpenTelemetry's OTLP/HTTP ([`OtlpExport`]): the
    /// same counts as the Prometheus endpoint, never a principal or a channel. Default
    /// `None`: no export.
    pub otlp: Option<OtlpExport>,
    /// Most mutual-TLS connections the hub serves at once; one more is answered
    /// `RESOURCE_EXHAUSTED` and closed. Default 20 000.
    pub max_connections: usize,
    /// Most mutual-TLS connections of one agent at once (so that connections can't multiply
    /// what one agent may hold); one more is answered `RESOURCE_EXHAUSTED` and closed.
    /// Default 256.
    pub max_connections_per_agent: usize,
    /// Most connections not yet authenticated the hub holds at once: in their TLS handshake
    /// (or refused after it, while they are told why), or on the enrollment listener (which
    /// never authenticates its client). Past it, a connection from a source that would then
    /// hold no more than the source holding most gets in, and that source's oldest is closed;
    /// any other is closed at once, before any TLS. Either is counted and
    /// recorded (`unauthenticated`). The mutual-TLS limits above apply only to registered
    /// connections. Default 1024.
    pub max_unauthenticated: usize,
    /// Most of those from one source (an IPv4 address, or an IPv6 /64); one more is closed
    /// before any TLS (`unauthenticated-per-source`). Default 128.
    pub max_unauthenticated_per_source: usize,
    /// How long the key bundle signed at enrollment is valid (cut to the intermediate CA's
    /// validity); a renewal past half that life signs it again, same keys and epoch, for as
    /// long from then. At least twice the certificates' lifetime (the CA's `svid_ttl`), so
    /// that some renewal always falls in that second half; [`Hub::start`](crate::Hub::start)
    /// refuses less. Default 30 days.
    pub key_bundle_ttl: Duration,
    /// Most join tokens stored, used or not (a used one is kept until it expires, so that a
    /// replay of it is told it was used): past it the expired ones are deleted to make room,
    /// and a token that finds none is refused (`RESOURCE_EXHAUSTED` to a remote
    /// administrator). Whoever may create tokens can't grow the store, and the work of each
    /// creation, without end. Default 100 000.
    pub max_join_tokens: usize,
    /// The break-glass administrators: principals that may do every administrative act over
    /// their mutual-TLS connection — create join tokens
    /// ([`CREATE_TOKEN_PATH`](crate::CREATE_TOKEN_PATH)), revoke
    /// ([`REVOKE_PATH`](crate::REVOKE_PATH)), load, show and check the policies
    /// ([`LOAD_POLICIES_PATH`](crate::LOAD_POLICIES_PATH) and the others) — **whatever the
    /// policies say**, so that no policy load can lock every administrator out. Each must be a
    /// principal of the CA's trust domain ([`Hub::start`](crate::Hub::start) refuses others).
    ///
    /// Anyone else may do what the running policies permit (`enroll` on the principal of a
    /// token, `revoke` on each principal revoked, `admin` on `Hub::"hub"` for the policy
    /// RPCs), but never revoke by certificate serial, nor create a token for or revoke a
    /// principal listed here: only a listed administrator may. Nobody may revoke itself.
    ///
    /// Default empty: only the policies grant administrative acts, and the operator holding
    /// the [`HubHandle`](crate::HubHandle) can always create tokens and revoke. `entente hub
    /// start` puts the admin human identity it creates, `spiffe://TD/human/admin`, here.
    pub admins: Vec<Principal>,
    /// The audit log ([`AuditConfig`]): every decision, every administrative and
    /// security-relevant act and every routed batch is recorded, and what can't be recorded
    /// is refused. Its keys live in the CA's key store. Default `None`: nothing is recorded
    /// (`entente hub start` always keeps one).
    pub audit: Option<AuditConfig>,
    /// How long a data key encrypts before the hub makes a new one
    /// ([`datakeys`](crate::datakeys)); older versions are retired once nothing kept at rest
    /// needs them. Default one day.
    pub data_key_rotation: Duration,
    /// The intermediate CA rollover ([`CaRollover`], docs/KEYS.md).
    pub ca_rollover: CaRollover,
    /// Where the hub's own keys live when not in the CA's key store ([`KeyStores`]).
    pub key_stores: KeyStores,
    /// The durable channels ([`StreamConfig`], docs/DURABLE.md). Default none.
    pub streams: Vec<StreamConfig>,
    /// Where durable channels are kept (a directory per channel); required with
    /// [`streams`](Self::streams). `entente hub start` uses `DATA/streams`.
    pub streams_dir: Option<PathBuf>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            limits: Limits::default(),
            policies: Vec::new(),
            replace_stored_policies: false,
            grant_limits: GrantLimits::default(),
            danger: crate::danger::Danger::default(),
            queue_capacity: 1024,
            queue_bytes: 1 << 20,
            slow_consumer_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_subscriptions: 1024,
            max_streams_per_connection: 4,
            metrics_listen: None,
            rate_limits: RateLimits::default(),
            anomaly: AnomalyConfig::default(),
            quarantine_webhook: None,
            otlp: None,
            max_connections: 20_000,
            max_connections_per_agent: 256,
            max_unauthenticated: 1024,
            max_unauthenticated_per_source: 128,
            key_bundle_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            max_join_tokens: 100_000,
            admins: Vec::new(),
            audit: None,
            data_key_rotation: Duration::from_secs(24 * 60 * 60),
            ca_rollover: CaRollover::default(),
            key_stores: KeyStores::default(),
            streams: Vec::new(),
            streams_dir: None,
        }
    }
}

/// When the hub rolls its intermediate CA over (docs/KEYS.md): a new intermediate is staged
/// (trusted, not signing) when the active one has less than [`lead`](Self::lead) left, or on
/// request; it signs after [`overlap`](Self::overlap); the old one leaves the trust bundle
/// another `overlap` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaRollover {
    /// How long each phase lasts. At least the SVID lifetime: then every agent holding a valid
    /// certificate when the new intermediate starts signing got that certificate, and with it
    /// the new trust bundle, after the staging; and nothing the old intermediate signed for
    /// TLS is still valid when it leaves. Default one day.
    pub overlap: Duration,
    /// Stage a new intermediate when the active one has less than this left. More than twice
    /// the overlap. Default 30 days.
    pub lead: Duration,
    /// Whether the hub stages new intermediates by itself ([`lead`](Self::lead)); steps of a
    /// rollover already begun are always taken. Default on.
    pub automatic: bool,
}

/// The key stores of the hub's own keys; `None` is the CA's key store. Each kind may live in
/// a store of its own — e.g. the CA keys in an HSM and the audit checkpoint key in the local
/// store, or the reverse (docs/KEYS.md §1).
#[derive(Debug, Clone, Default)]
pub struct KeyStores {
    /// The audit checkpoint keys and the key wrapping the audit HMAC key
    /// ([`AUDIT_SIGNING_KEY`](crate::AUDIT_SIGNING_KEY), [`AUDIT_KEK`](crate::AUDIT_KEK)).
    pub audit: Option<Arc<dyn KeyStore>>,
    /// The key wrapping the data keys ([`DATA_KEK`](crate::datakeys::DATA_KEK)).
    pub data: Option<Arc<dyn KeyStore>>,
}

/// Two settings are equal when they name the same stores.
impl PartialEq for KeyStores {
    fn eq(&self, other: &Self) -> bool {
        fn same(a: Option<&Arc<dyn KeyStore>>, b: Option<&Arc<dyn KeyStore>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same(self.audit.as_ref(), other.audit.as_ref())
            && same(self.data.as_ref(), other.data.as_ref())
    }
}

impl Eq for KeyStores {}

impl Default for CaRollover {
    fn default() -> Self {
        const DAY: u64 = 24 * 60 * 60;
        Self {
            overlap: Duration::from_secs(DAY),
            lead: Duration::from_secs(30 * DAY),
            automatic: true,
        }
    }
}

impl HubConfig {
    /// Refuses values the hub can't run with; `trust_domain` is the CA's, `svid_ttl` the
    /// lifetime of the certificates it issues.
    pub(crate) fn check(&self, trust_domain: &str, svid_ttl: Duration) -> Result<(), HubError> {
        if self.ca_rollover.overlap < svid_ttl {
            return Err(HubError::Config(
                "ca_rollover.overlap must be at least the svid lifetime",
            ));
        }
        if self.ca_rollover.lead <= self.ca_rollover.overlap.saturating_mul(2) {
            return Err(HubError::Config(
                "ca_rollover.lead must be more than twice ca_rollover.overlap",
            ));
        }
        if self.queue_capacity == 0 {
            return Err(HubError::Config("queue_capacity must be at least 1"));
        }
        if self.queue_bytes == 0 || u32::try_from(self.queue_bytes).is_err() {
            return Err(HubError::Config(
                "queue_bytes must be at least 1 and below 4 GiB",
            ));
        }
        if self.max_streams_per_connection == 0 {
            return Err(HubError::Config(
                "max_streams_per_connection must be at least 1",
            ));
        }
        if self.max_connections == 0 || self.max_connections_per_agent == 0 {
            return Err(HubError::Config(
                "max_connections and max_connections_per_agent must be at least 1",
            ));
        }
        if self.max_unauthenticated == 0 || self.max_unauthenticated_per_source == 0 {
            return Err(HubError::Config(
                "max_unauthenticated and max_unauthenticated_per_source must be at least 1",
            ));
        }
        self.rate_limits.check().map_err(HubError::Config)?;
        self.anomaly.check().map_err(HubError::Config)?;
        if self.limits.max_frame_bytes == 0 {
            return Err(HubError::Config(
                "limits.max_frame_bytes must be at least 1",
            ));
        }
        if !self.streams.is_empty() && self.limits.max_frame_bytes > MAX_DURABLE_FRAME_BYTES {
            return Err(HubError::Config(
                "limits.max_frame_bytes must be at most 67 108 567 bytes (64 MiB less 297) with \
                 durable channels: each entry stored (up to a frame's worth after its channel's \
                 name, sealed at rest) and its dead letter (8 bytes more) must fit a stream \
                 entry of 64 MiB",
            ));
        }
        if self.max_join_tokens == 0 {
            return Err(HubError::Config("max_join_tokens must be at least 1"));
        }
        if self.handshake_timeout.is_zero()
            || self.slow_consumer_timeout.is_zero()
            || self.idle_timeout.is_zero()
        {
            return Err(HubError::Config("timeouts must not be zero"));
        }
        if self.data_key_rotation < Duration::from_secs(1) {
            return Err(HubError::Config(
                "data_key_rotation must be at least a second",
            ));
        }
        // An agent renews its certificate at half its life, and a renewal extends the key
        // bundle only past half the bundle's: with a bundle shorter than two certificates'
        // lives, renewals could all fall before that half and the bundle run out.
        if self.key_bundle_ttl < svid_ttl.saturating_mul(2) {
            return Err(HubError::Config(
                "key_bundle_ttl must be at least twice the certificates' lifetime (svid_ttl): \
                 a renewal, at half a certificate's life, extends a key bundle only past half \
                 the bundle's",
            ));
        }
        if self
            .admins
            .iter()
            .any(|admin| admin.trust_domain() != trust_domain)
        {
            return Err(HubError::Config(
                "admins must be principals of the hub's trust domain",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use entente_types::ChannelPattern;

    use super::*;

    fn check(max_frame_bytes: usize, durable: bool) -> Result<(), HubError> {
        let mut config = HubConfig::default();
        config.limits.max_frame_bytes = max_frame_bytes;
        if durable {
            let channels = ChannelPattern::parse("orders.>").unwrap();
            config.streams = vec![StreamConfig::new("orders", channels)];
        }
        config.check("example.org", Duration::from_secs(3600))
    }

    /// A frame size whose entries a stream can't take is refused at start, rather than
    /// failing the durable channel at its first such publish or dead letter.
    #[test]
    fn a_frame_size_durable_entries_would_not_fit_is_refused_with_durable_channels() {
        assert_eq!(MAX_DURABLE_FRAME_BYTES, 67_108_567);
        assert_eq!(
            MAX_DURABLE_FRAME_BYTES + DEAD_LETTER_SEQ_LEN + SEAL_OVERHEAD + 2 + MAX_CHANNEL_LEN,
            MAX_ENTRY_LEN
        );
        check(MAX_DURABLE_FRAME_BYTES, true).unwrap();
        for too_large in [MAX_DURABLE_FRAME_BYTES + 1, MAX_ENTRY_LEN, usize::MAX] {
            let err = check(too_large, true).unwrap_err().to_string();
            assert!(
                err.contains("max_frame_bytes must be at most 67 108 567 bytes"),
                "{too_large}: {err}"
            );
        }
        // No durable channel, no stream entry to fit.
        check(MAX_ENTRY_LEN, false).unwrap();
        assert!(check(0, false).is_err());
    }

    /// A key bundle shorter than two certificates' lives could run out between the renewals
    /// that extend it: refused at start, with what to change.
    #[test]
    fn a_key_bundle_lifetime_under_two_certificate_lifetimes_is_refused() {
        let svid_ttl = Duration::from_secs(3600);
        let with = |key_bundle_ttl| {
            HubConfig {
                key_bundle_ttl,
                ..HubConfig::default()
            }
            .check("example.org", svid_ttl)
        };
        with(svid_ttl * 2).unwrap();
        with(HubConfig::default().key_bundle_ttl).unwrap();
        for short in [
            svid_ttl * 2 - Duration::from_millis(1),
            svid_ttl,
            Duration::ZERO,
        ] {
            let err = with(short).unwrap_err().to_string();
            assert!(
                err.contains("key_bundle_ttl must be at least twice"),
                "{short:?}: {err}"
            );
        }
    }
}
