//! Writes the seed corpora of the fuzz targets, `fuzz/seeds/<target>/`: a few small valid
//! inputs each, signed and sealed with the fixture's keys (`entente_fuzz::fixture`), so that
//! the fuzzer starts from inputs that verify and open.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds            # write, then check
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds -- --check # check only
//! ```
//!
//! Signatures (ECDSA) and sealing (HPKE, epoch secrets) are randomized: the files change at
//! each run, and any run's files serve. The check makes sure each seed still gets through to
//! the deep end of its target (batches open, bundles and certificates verify, policies load),
//! which a change of format or of the fixture would otherwise stop silently.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use entente_ca::{TrustBundle, VerifiedRevocationList};
use entente_crypto::{KeyBundleBody, KeyBundleIn, MessageKeys, Sealer, SealerOptions};
use entente_fuzz::{Fixture, NOW_MS, TRUST_DOMAIN, fixture, now, spiffe_san};
use entente_policy::{BASE_POLICIES, PolicySet};
use entente_types::{Channel, Principal};
use entente_wire::{self as wire, ClientFrame, ServerFrame, client_frame, server_frame};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let check_only = std::env::args().any(|a| a == "--check");
    let root = std::env::args_os()
        .skip(1)
        .find(|a| a != "--check")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"),
            PathBuf::from,
        );
    if !check_only {
        write(&root)?;
    }
    check(&root)
}

fn write(root: &Path) -> Result<()> {
    let f = fixture();
    let sealed = Sealed::new(f)?;

    let mut seeds = Seeds::new(root);
    seeds.target("envelope_open")?;
    sealed.deliveries(&mut seeds)?;
    seeds.target("envelope_resigned")?;
    sealed.deliveries(&mut seeds)?;
    seeds.target("frames")?;
    frames(&sealed, &mut seeds)?;
    seeds.target("wire_messages")?;
    wire_messages(f, &sealed, &mut seeds)?;
    seeds.target("key_bundle")?;
    key_bundles(f, &mut seeds)?;
    seeds.target("revocation_list")?;
    revocation_lists(f, &mut seeds)?;
    seeds.target("certificates")?;
    certificates(f, &mut seeds)?;
    seeds.target("policy_load")?;
    seeds.write("base.cedar", BASE_POLICIES.as_bytes())?;
    for (name, text) in POLICIES {
        seeds.write(name, text.as_bytes())?;
    }
    // Two sources in one load (NUL separates them).
    let sources: Vec<&str> = POLICIES.iter().map(|(_, text)| *text).collect();
    seeds.write("all-sources", sources.join("\0").as_bytes())?;
    seeds.target("hub_config")?;
    for (name, text) in CONFIGS {
        seeds.write(name, text.as_bytes())?;
    }
    Ok(())
}

/// Checks that every seed under `root` gets through its target's checks.
fn check(root: &Path) -> Result<()> {
    let f = fixture();
    let limits = wire::Limits::default();
    let mut checked = 0;
    for target in fs::read_dir(root)? {
        let target = target?.path();
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        for seed in fs::read_dir(&target)? {
            let seed = seed?.path();
            let bytes = fs::read(&seed)?;
            let failed = |why: &str| format!("{}: {why}", seed.display());
            let text = || std::str::from_utf8(&bytes);
            let ok = match name.as_str() {
                "envelope_open" | "envelope_resigned" => {
                    let deliver: wire::Deliver = wire::decode(&bytes, &limits)?;
                    let envelopes: usize = deliver.batches.iter().map(|b| b.envelopes.len()).sum();
                    f.receive(deliver.sender_keys, deliver.batches) == envelopes
                }
                "frames" => {
                    wire::decode::<ClientFrame>(&bytes, &limits).is_ok()
                        || wire::decode::<ServerFrame>(&bytes, &limits).is_ok()
                }
                "wire_messages" => check_message(&bytes),
                "key_bundle" => KeyBundleIn::decode(&bytes, &limits)
                    .is_ok_and(|b| b.verify(&f.trust, NOW_MS).is_ok()),
                "revocation_list" => {
                    VerifiedRevocationList::decode(&bytes, &limits, &f.trust, now()).is_ok()
                }
                "certificates" => check_certificate(f, &bytes),
                "policy_load" => text()?
                    .split('\0')
                    .enumerate()
                    .fold(PolicySet::builder(), |b, (i, source)| {
                        b.source(format!("source-{i}.cedar"), source)
                    })
                    .build()
                    .is_ok(),
                "hub_config" => toml::from_str::<toml::Table>(text()?).is_ok(),
                _ => return Err(failed("no check for this target").into()),
            };
            if !ok {
                return Err(failed("does not get through its target's checks").into());
            }
            checked += 1;
        }
    }
    println!("{checked} seeds checked");
    Ok(())
}

/// Whether a `wire_messages` seed decodes as the type its first byte names.
fn check_message(bytes: &[u8]) -> bool {
    let limits = wire::Limits::default();
    let Some((&selector, bytes)) = bytes.split_first() else {
        return false;
    };
    let name = entente_fuzz::WIRE_MESSAGES.get(usize::from(selector));
    match name.copied().unwrap_or_default() {
        "SignedBatch" => wire::decode::<wire::SignedBatch>(bytes, &limits).is_ok(),
        "SenderKey" => wire::decode::<wire::SenderKey>(bytes, &limits).is_ok(),
        "EnrollRequest" => wire::decode::<wire::EnrollRequest>(bytes, &limits).is_ok(),
        "RenewResponse" => wire::decode::<wire::RenewResponse>(bytes, &limits).is_ok(),
        "DirectoryResponse" => wire::decode::<wire::DirectoryResponse>(bytes, &limits).is_ok(),
        "LoadPoliciesRequest" => wire::decode::<wire::LoadPoliciesRequest>(bytes, &limits).is_ok(),
        "ApproveRequest" => wire::decode::<wire::ApproveRequest>(bytes, &limits).is_ok(),
        "RevokeRequest" => wire::decode::<wire::RevokeRequest>(bytes, &limits).is_ok(),
        _ => false,
    }
}

/// Whether a `certificates` seed parses, chains or verifies, as its first byte says.
fn check_certificate(f: &Fixture, bytes: &[u8]) -> bool {
    let Some((&selector, bytes)) = bytes.split_first() else {
        return false;
    };
    let der = CertificateDer::from(bytes.to_vec());
    let chain = [der.clone()];
    match selector {
        0 => std::str::from_utf8(bytes).is_ok_and(|pem| {
            TrustBundle::from_pem(pem).is_ok_and(|b| f.trust.adopt_intermediates(&b).is_ok())
        }),
        1 => TrustBundle::new(f.trust.roots().to_vec(), vec![der]).is_ok(),
        2 => f
            .trust
            .verify_svid(&chain, now(), Some(&f.revocations))
            .is_ok(),
        3 => f.trust.verify_server_svid(&chain, now(), None).is_ok(),
        _ => false,
    }
}

/// Sender keys and batches from Alice to Bob on the fixture's channel.
struct Sealed {
    first_key: wire::SenderKey,
    second_key: wire::SenderKey,
    one: wire::SignedBatch,
    requests: wire::SignedBatch,
    after_rotation: wire::SignedBatch,
    /// Alice's sender key for Bob's reply namespace root, and a batch of replies under it.
    reply_key: wire::SenderKey,
    replies: wire::SignedBatch,
}

impl Sealed {
    fn new(f: &Fixture) -> Result<Self> {
        let now = NOW_MS - 1_000;
        let (mut sealer, first_key) = Sealer::new(
            f.alice.principal.clone(),
            f.alice.bundle.epoch(),
            Arc::clone(&f.alice.keys),
            Channel::parse(entente_fuzz::CHANNEL)?,
            std::slice::from_ref(&f.bob.bundle),
            SealerOptions::default(),
            now,
        )?;
        let one = sealer.seal_batch(&[b"hello, bob"], None, now)?;
        let reply = Channel::parse("_reply.ops.alice.k7Qx")?;
        let requests = sealer.seal_batch(
            &[b"which orders shipped today?", b"", b"and yesterday?"],
            Some(&reply),
            now,
        )?;
        let second_key = sealer.rotate(std::slice::from_ref(&f.bob.bundle), now + 1)?;
        let after_rotation = sealer.seal_batch(&[b"new epoch"], None, now + 1)?;
        let (mut replying, reply_key) = Sealer::new(
            f.alice.principal.clone(),
            f.alice.bundle.epoch(),
            Arc::clone(&f.alice.keys),
            Channel::parse("_reply.ops.bob")?,
            std::slice::from_ref(&f.bob.bundle),
            SealerOptions::default(),
            now,
        )?;
        let (r1, r2) = (
            Channel::parse("_reply.ops.bob.r1")?,
            Channel::parse("_reply.ops.bob.r2")?,
        );
        let replies = replying.seal_replies(
            [
                (&r1, &b"42 orders"[..], None),
                (&r2, &b"none"[..], Some(&reply)),
            ]
            .into_iter(),
            now,
        )?;
        Ok(Self {
            first_key,
            second_key,
            one,
            requests,
            after_rotation,
            reply_key,
            replies,
        })
    }

    fn deliveries(&self, seeds: &mut Seeds) -> Result<()> {
        let deliver = |sender_keys: &[&wire::SenderKey], batches: &[&wire::SignedBatch]| {
            wire::encode(&wire::Deliver {
                subscription_id: 1,
                sender_keys: sender_keys.iter().map(|&k| k.clone()).collect(),
                batches: batches.iter().map(|&b| b.clone()).collect(),
                sequence: 0,
                attempt: 0,
            })
        };
        seeds.write("one", &deliver(&[&self.first_key], &[&self.one]))?;
        seeds.write(
            "requests",
            &deliver(&[&self.first_key], &[&self.requests, &self.one]),
        )?;
        seeds.write(
            "replies",
            &deliver(&[&self.reply_key], &[&self.replies]),
        )?;
        seeds.write(
            "two-epochs",
            &deliver(
                &[&self.first_key, &self.second_key],
                &[&self.one, &self.after_rotation],
            ),
        )?;
        Ok(())
    }
}

fn frames(sealed: &Sealed, seeds: &mut Seeds) -> Result<()> {
    let client = |kind| wire::encode(&ClientFrame { kind: Some(kind) });
    let server = |kind| wire::encode(&ServerFrame { kind: Some(kind) });
    seeds.write(
        "publish",
        &client(client_frame::Kind::Publish(wire::Publish {
            request_id: 7,
            sender_keys: vec![sealed.first_key.clone()],
            batches: vec![sealed.one.clone(), sealed.requests.clone()],
            purpose: "invoice 42, due today".into(),
        })),
    )?;
    seeds.write(
        "subscribe",
        &client(client_frame::Kind::Subscribe(wire::Subscribe {
            subscription_id: 3,
            pattern: "orders.*.created".into(),
            durable: "orders-audit".into(),
        })),
    )?;
    seeds.write(
        "durable-ack",
        &client(client_frame::Kind::DurableAck(wire::DurableAck {
            subscription_id: 3,
            sequences: vec![1, 2, 300, u64::MAX],
        })),
    )?;
    seeds.write(
        "deliver",
        &server(server_frame::Kind::Deliver(wire::Deliver {
            subscription_id: 3,
            sender_keys: vec![sealed.first_key.clone()],
            batches: vec![sealed.one.clone()],
            sequence: 12,
            attempt: 1,
        })),
    )?;
    seeds.write(
        "ack",
        &server(server_frame::Kind::Ack(wire::Ack {
            request_id: 7,
            held: vec![wire::Held {
                message_id: "0193c3a2-4d1e-7c3a-9f00-1a2b3c4d5e6f".into(),
                channel: "demo.payments".into(),
                expires_at_ms: NOW_MS + 3_600_000,
            }],
        })),
    )?;
    seeds.write(
        "refusal",
        &server(server_frame::Kind::Refusal(wire::Refusal {
            request_id: 7,
            code: 3,
            reason: "no policy permits it (policy epoch 4)".into(),
            retry_after_ms: 0,
        })),
    )?;
    Ok(())
}

fn wire_messages(f: &Fixture, sealed: &Sealed, seeds: &mut Seeds) -> Result<()> {
    let alice = f.alice.bundle.to_wire().clone();
    let message = |name: &str, bytes: Vec<u8>| -> Result<()> {
        let selector = entente_fuzz::message_selector(name)
            .ok_or_else(|| format!("`{name}` is not a wire message"))?;
        let mut input = vec![selector];
        input.extend(bytes);
        seeds.write(name, &input)
    };
    message("SignedBatch", wire::encode(&sealed.requests))?;
    message("SenderKey", wire::encode(&sealed.first_key))?;
    message(
        "EnrollRequest",
        wire::encode(&wire::EnrollRequest {
            token: "ent_join_3q2+7w".into(),
            csr: vec![0x30, 0x82, 0x01, 0x0a],
            ed25519_public: f.alice.keys.ed25519_public().to_vec(),
            x25519_public: f.alice.keys.x25519_public().to_vec(),
        }),
    )?;
    message(
        "RenewResponse",
        wire::encode(&wire::RenewResponse {
            certificate_chain: vec![f.intermediate.cert.to_vec()],
            trust_bundle_pem: f.trust.to_pem(),
            key_bundle: Some(alice.clone()),
        }),
    )?;
    message(
        "DirectoryResponse",
        wire::encode(&wire::DirectoryResponse {
            bundles: vec![alice.clone(), f.bob.bundle.to_wire().clone()],
        }),
    )?;
    message(
        "LoadPoliciesRequest",
        wire::encode(&wire::LoadPoliciesRequest {
            sources: vec![wire::PolicySource {
                name: "orders.cedar".into(),
                text: POLICIES.first().map_or("", |(_, text)| text).into(),
            }],
        }),
    )?;
    message(
        "ApproveRequest",
        wire::encode(&wire::ApproveRequest {
            statement: Some(wire::ApprovalStatement {
                verdict: "approve".into(),
                kind: "grant-request".into(),
                object_id: "r-7".into(),
                object_hash: vec![0x60; 32],
                approver: format!("spiffe://{TRUST_DOMAIN}/human/ann"),
                key_epoch: 3,
                signed_at_ms: NOW_MS,
            }),
            signature: vec![0x11; 64],
            key_bundle: Some(alice),
        }),
    )?;
    message(
        "RevokeRequest",
        wire::encode(&wire::RevokeRequest {
            principals: vec![format!("spiffe://{TRUST_DOMAIN}/agent/ops/mallory")],
            serials: vec![vec![0x42; 16]],
        }),
    )?;
    Ok(())
}

fn key_bundles(f: &Fixture, seeds: &mut Seeds) -> Result<()> {
    seeds.write("alice", &wire::encode(f.alice.bundle.to_wire()))?;
    let ann = MessageKeys::generate()?;
    let bundle = f.sign_bundle(KeyBundleBody {
        principal: Principal::parse(&format!("spiffe://{TRUST_DOMAIN}/human/ann"))?,
        ed25519_public: ann.ed25519_public(),
        x25519_public: ann.x25519_public(),
        epoch: 3,
        not_before_ms: NOW_MS - 60_000,
        not_after_ms: NOW_MS + 86_400_000,
    })?;
    seeds.write("human", &wire::encode(&bundle))?;
    Ok(())
}

fn revocation_lists(f: &Fixture, seeds: &mut Seeds) -> Result<()> {
    seeds.write("one-each", &f.revocations.encode())?;
    let list = f.sign_revocations(
        9,
        vec![vec![0x01], vec![0x42; 16], vec![0x7f; 21]],
        vec![
            format!("spiffe://{TRUST_DOMAIN}/agent/ops/mallory"),
            format!("spiffe://{TRUST_DOMAIN}/human/eve"),
        ],
    )?;
    seeds.write("several", &wire::encode(&list))?;
    Ok(())
}

fn certificates(f: &Fixture, seeds: &mut Seeds) -> Result<()> {
    let with = |selector: u8, bytes: &[u8]| {
        let mut input = vec![selector];
        input.extend_from_slice(bytes);
        input
    };
    seeds.write("trust-bundle", &with(0, f.trust.to_pem().as_bytes()))?;
    seeds.write("intermediate", &with(1, &f.intermediate.cert))?;
    let client = svid(f, &format!("spiffe://{TRUST_DOMAIN}/agent/ops/alice"))?;
    seeds.write("client-svid", &with(2, &client))?;
    let hub = svid(f, &format!("spiffe://{TRUST_DOMAIN}/agent/system/hub"))?;
    seeds.write("server-svid", &with(3, &hub))?;
    Ok(())
}

/// An X509-SVID for `uri` issued by the fixture's intermediate, shaped as the CA issues them.
fn svid(f: &Fixture, uri: &str) -> Result<Vec<u8>> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = spiffe_san(uri);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::new(f.intermediate.params.clone(), &f.intermediate.key);
    Ok(params.signed_by(&key, &issuer)?.der().to_vec())
}

/// Policy sources: the shapes docs/POLICY.md describes.
const POLICIES: &[(&str, &str)] = &[
    (
        "segments.cedar",
        r#"@id("research-publishes")
permit (principal in Segment::"research", action == Action::"publish",
        resource in Namespace::"research");

@id("lab-reads-results")
@cross_segment
permit (principal in Segment::"lab", action == Action::"subscribe",
        resource == Channel::"research.results");
"#,
    ),
    (
        "grants.cedar",
        r#"@id("demo-traffic")
permit (
  principal in Segment::"demo",
  action in [Action::"publish", Action::"subscribe", Action::"request"],
  resource in Namespace::"demo"
);

@id("demo-read")
@grant("demo-read")
@approvals("2")
@max_duration("1h30m")
@cross_segment
permit (principal in Segment::"ops", action == Action::"subscribe", resource in Namespace::"demo")
when { context.grants.contains("demo-read") };
"#,
    ),
    (
        "hold.cedar",
        r#"@id("admins")
permit (principal == Human::"spiffe://acme.internal/human/admin",
        action in [Action::"grant", Action::"revoke", Action::"approve", Action::"admin"],
        resource);

@id("payments-need-approval")
@hold
forbid (principal, action == Action::"publish", resource)
when { resource == Channel::"demo.payments" || resource in Namespace::"demo.payments" }
unless { context.approvals >= 1 };
"#,
    ),
    (
        "rates.cedar",
        r#"@id("sandbox-publishes")
@rate("10/s")
permit (principal in Segment::"sandbox", action == Action::"publish",
        resource in Namespace::"sandbox");

@id("sandbox-reports")
@rate("60/min") @burst("5")
permit (principal in Segment::"sandbox", action in [Action::"publish", Action::"request"],
        resource == Channel::"sandbox.reports");

@id("sandbox-listens")
@rate("100/h")
permit (principal in Segment::"sandbox", action == Action::"subscribe",
        resource in Namespace::"sandbox");
"#,
    ),
];

/// Hub configuration files, as `entente hub start` writes and reads them.
const CONFIGS: &[(&str, &str)] = &[
    (
        "minimal.toml",
        "listen = \"127.0.0.1:7422\"\ntrust_domain = \"acme.internal\"\n",
    ),
    (
        "full.toml",
        r#"listen = "[::]:7422"
trust_domain = "acme.internal"

[keystore]
backend = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "entente-hub"

[audit_keystore]
backend = "local"

[[durable]]
name = "orders"
channels = "orders.>"
max_messages = 1000000
max_bytes = 1073741824
max_age = "7d"
ack_wait = "30s"
max_deliver = 5
sync = "2m"

[ca_rollover]
overlap = "1d"
lead = "30d"
automatic = true

[limits]
agent_messages_per_second = 100000
agent_messages_burst = 200000
agent_bytes_per_second = 67108864
max_connections = 20000
max_connections_per_agent = 256

[[limits.channel]]
channels = "tasks.>"
per_second = 500
burst = 1000

[metrics]
listen = "127.0.0.1:9464"
"#,
    ),
];

/// Writes seeds under `root`, one directory per target.
struct Seeds {
    root: PathBuf,
    dir: PathBuf,
}

impl Seeds {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            dir: root.to_path_buf(),
        }
    }

    /// Starts writing the seeds of `target`, removing its old ones.
    fn target(&mut self, target: &str) -> Result<()> {
        self.dir = self.root.join(target);
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)?;
        }
        fs::create_dir_all(&self.dir)?;
        Ok(())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        fs::write(self.dir.join(name), bytes)?;
        println!("{} ({} bytes)", self.dir.join(name).display(), bytes.len());
        Ok(())
    }
}
