//! `entente demo`: a narrated walk through the security properties, on a throwaway CA.
//!
//! Every step does the real thing — a CA whose keys sit in an encrypted key store, join tokens,
//! CSRs and X509-SVIDs, CA-signed key bundles, HPKE-wrapped sender keys, sealed and signed
//! batches — and checks the outcome. The demo exits 0 only if every property held.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow};
use entente_ca::{Ca, CaOptions, IssuedSvid, JoinTokens, Revocations};
use entente_crypto::{
    EcdsaAuthority, KeyBundleBody, KeyBundleIn, MessageKeys, Opener, Sealer, SenderKeyIn,
    SignedBatchIn, VerifiedKeyBundle,
};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_types::{AgentId, Principal, TrustDomain};
use entente_wire as wire;

pub(crate) fn run(json: bool) -> Result<ExitCode> {
    let mut story = Story::new(json);
    let outcome = scenario(&mut story);
    if let Err(err) = &outcome {
        story.check(false, &format!("the scenario stopped: {err:#}"));
    }
    Ok(story.finish())
}

/// Agent identity as enrolled: certificate, message keys, verified key bundle.
struct Enrolled {
    id: Principal,
    svid: IssuedSvid,
    keys: Arc<MessageKeys>,
    bundle: VerifiedKeyBundle,
}

fn scenario(story: &mut Story) -> Result<()> {
    let now = SystemTime::now();
    let now_ms = unix_ms(now)?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let td = TrustDomain::new("demo.entente.local")?;

    story.step("An operator creates a trust domain: a root and an intermediate CA.");
    let passphrase = hex::encode(random_bytes::<16>()?);
    let keystore = LocalKeyStore::create(
        &dir.path().join("keys"),
        &Unlock::passphrase(&passphrase),
        Argon2Params::default(),
    )?;
    let ca = Ca::init(Arc::new(keystore), &td, CaOptions::default(), now)?;
    let trust = ca.trust_bundle();
    let authority = trust.authority();
    story.check(
        true,
        "CA keys live in an Argon2id-encrypted key store (files 0600); certificates are ECDSA P-256",
    );

    story.step(
        "The operator creates one-time join tokens; agents enroll with a CSR and message keys.",
    );
    let mut tokens = JoinTokens::new();
    let alice = enroll(&ca, &mut tokens, &td, "alice", now)?;
    let bob = enroll(&ca, &mut tokens, &td, "bob", now)?;
    let eve = enroll(&ca, &mut tokens, &td, "eve", now)?;
    for agent in [&alice, &bob, &eve] {
        let verified = trust.verify_svid(&agent.svid.chain_der, now, None)?;
        story.check(
            verified.principal() == &agent.id,
            &format!(
                "{} holds an X509-SVID that verifies against the trust bundle",
                agent.id
            ),
        );
    }
    let (token, _) = tokens.create(agent_id(&td, "mallory")?, Duration::from_secs(600), now)?;
    tokens.redeem(token.as_str(), now)?;
    let reuse = tokens.redeem(token.as_str(), now);
    story.check(
        reuse.is_err(),
        &format!(
            "a join token used twice is refused: {}",
            reuse.err().map(|e| e.to_string()).unwrap_or_default()
        ),
    );

    story.step("Alice seals three messages on `orders.eu` for Bob only.");
    let (mut sealer, sender_key) = Sealer::new(
        alice.id.clone(),
        alice.bundle.epoch(),
        alice.keys.clone(),
        "orders.eu".parse()?,
        std::slice::from_ref(&bob.bundle),
        Default::default(),
        now_ms,
    )?;
    let messages: [&[u8]; 3] = [
        b"refund order 1042",
        b"ship order 1043 to Lyon",
        b"{\"order\":1044,\"status\":\"held\"}",
    ];
    let batch = sealer.seal_batch(&messages, None, now_ms)?;
    let bytes = wire::encode(&batch);
    story.check(
        messages.iter().all(|m| !contains(&bytes, m)) && !contains(&bytes, b"Lyon"),
        &format!(
            "the {} bytes on the wire carry headers and ciphertext only: no payload text",
            bytes.len()
        ),
    );

    let mut bob_opener = opener(&bob);
    let sk = SenderKeyIn::from_wire(sender_key.clone())?;
    bob_opener.accept_sender_key(&sk, &fetch_bundle(&alice, &authority, now_ms)?, now_ms)?;
    let opened = bob_opener.open(decode_batch(&bytes)?, &alice.bundle, now_ms)?;
    let texts: Vec<String> = opened
        .delivered
        .iter()
        .map(|e| String::from_utf8_lossy(e.payload()).into_owned())
        .collect();
    story.check(
        texts.len() == 3 && opened.rejected.is_empty(),
        &format!("Bob verifies Alice's signature and reads: {texts:?}"),
    );

    story.step("Eve, a valid agent of the same trust domain but not a recipient, tries to read.");
    let mut eve_opener = opener(&eve);
    let unwrap = eve_opener.accept_sender_key(&sk, &alice.bundle, now_ms);
    let read = eve_opener.open(decode_batch(&bytes)?, &alice.bundle, now_ms)?;
    story.check(
        unwrap.is_err() && read.delivered.is_empty(),
        &format!(
            "Eve cannot unwrap the sender key ({}) nor open a single envelope",
            unwrap.err().map(|e| e.to_string()).unwrap_or_default()
        ),
    );

    story.step("Mallory forges a message claiming to be Alice, with keys of her own.");
    let forger_keys = Arc::new(MessageKeys::generate()?);
    let (mut forger, _) = Sealer::new(
        alice.id.clone(),
        alice.bundle.epoch(),
        forger_keys,
        "orders.eu".parse()?,
        std::slice::from_ref(&bob.bundle),
        Default::default(),
        now_ms,
    )?;
    let forged = wire::encode(&forger.seal_batch(&[b"pay mallory 10000 EUR"], None, now_ms)?);
    let verdict = bob_opener.open(decode_batch(&forged)?, &alice.bundle, now_ms);
    story.check(
        verdict.is_err(),
        &format!("Bob refuses it: {}", describe(verdict.err())),
    );

    story.step("An attacker on the path replays Alice's batch, then flips one bit of it.");
    let replay = bob_opener.open(decode_batch(&bytes)?, &alice.bundle, now_ms)?;
    story.check(
        replay.delivered.is_empty() && replay.rejected.len() == 3,
        &format!(
            "the replay is refused, envelope by envelope: {}",
            describe(replay.rejected.first().map(|(_, e)| e.clone()))
        ),
    );
    let mut tampered = bytes.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 1;
    }
    let verdict =
        decode_batch(&tampered).and_then(|b| Ok(bob_opener.open(b, &alice.bundle, now_ms)?));
    story.check(
        verdict.is_err(),
        &format!(
            "the tampered batch is refused: {}",
            describe_anyhow(verdict.err())
        ),
    );

    story.step("Key bundles come from the CA, not from whoever serves them.");
    let rogue_dir = dir.path().join("rogue");
    let rogue_store = LocalKeyStore::create(
        &rogue_dir,
        &Unlock::passphrase(&passphrase),
        Argon2Params::default(),
    )?;
    let rogue = Ca::init(Arc::new(rogue_store), &td, CaOptions::default(), now)?;
    let fake = rogue.sign_key_bundle(KeyBundleBody {
        principal: alice.id.clone(),
        ..alice.bundle.body().clone()
    })?;
    let verdict = KeyBundleIn::from_wire(fake)?.verify(&authority, now_ms);
    story.check(
        verdict.is_err(),
        &format!(
            "a key bundle for Alice signed by another CA is refused: {}",
            describe(verdict.err())
        ),
    );

    story.step("The operator revokes Bob's certificate.");
    let mut revocations = Revocations::new();
    revocations.revoke_serial(&bob.svid.serial)?;
    let list = ca.sign_revocations(&revocations, now)?;
    let list = entente_ca::VerifiedRevocationList::verify(list, trust, now)?;
    let verdict = trust.verify_svid(&bob.svid.chain_der, now, Some(&list));
    let still_alice = trust.verify_svid(&alice.svid.chain_der, now, Some(&list));
    story.check(
        verdict.is_err() && still_alice.is_ok(),
        &format!(
            "Bob's certificate is refused ({}); Alice's still verifies",
            describe(verdict.err())
        ),
    );
    Ok(())
}

fn enroll(
    ca: &Ca,
    tokens: &mut JoinTokens,
    td: &TrustDomain,
    name: &str,
    now: SystemTime,
) -> Result<Enrolled> {
    let agent = agent_id(td, name)?;
    let (token, _) = tokens.create(agent, Duration::from_secs(600), now)?;
    // The agent's side: a TLS key pair and CSR, and message keys.
    let tls_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&tls_key)?;
    let keys = Arc::new(MessageKeys::generate()?);
    // The CA's side: redeem the token, issue the certificate and the key bundle.
    let agent = tokens.redeem(token.as_str(), now)?;
    let id = Principal::from(agent);
    let svid = ca.issue_svid(csr.der(), &id, now)?;
    let now_ms = unix_ms(now)?;
    let bundle = ca.sign_key_bundle(KeyBundleBody {
        principal: id.clone(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: 1,
        not_before_ms: now_ms.saturating_sub(60_000),
        not_after_ms: now_ms + 24 * 3_600_000,
    })?;
    let bundle = KeyBundleIn::from_wire(bundle)?.verify(&ca.trust_bundle().authority(), now_ms)?;
    Ok(Enrolled {
        id,
        svid,
        keys,
        bundle,
    })
}

fn agent_id(td: &TrustDomain, name: &str) -> Result<AgentId> {
    Ok(AgentId::new(td, "ops", name)?)
}

fn opener(agent: &Enrolled) -> Opener {
    Opener::new(
        agent.id.clone(),
        agent.bundle.epoch(),
        agent.keys.clone(),
        Default::default(),
    )
}

/// What a receiver does with a bundle it fetched: decode it and verify it against the CA.
fn fetch_bundle(
    agent: &Enrolled,
    authority: &EcdsaAuthority,
    now_ms: u64,
) -> Result<VerifiedKeyBundle> {
    let bytes = wire::encode(agent.bundle.to_wire());
    Ok(KeyBundleIn::decode(&bytes, &wire::Limits::default())?.verify(authority, now_ms)?)
}

fn decode_batch(bytes: &[u8]) -> Result<SignedBatchIn> {
    Ok(SignedBatchIn::decode(bytes, &wire::Limits::default())?)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn describe<E: std::fmt::Display>(err: Option<E>) -> String {
    err.map_or_else(|| "no error".to_owned(), |e| e.to_string())
}

fn describe_anyhow(err: Option<anyhow::Error>) -> String {
    err.map_or_else(|| "no error".to_owned(), |e| format!("{e:#}"))
}

fn unix_ms(t: SystemTime) -> Result<u64> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("the clock is before 1970"))?;
    u64::try_from(d.as_millis()).map_err(|_| anyhow!("the clock is out of range"))
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut out = [0u8; N];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| anyhow!("the system random source failed"))?;
    Ok(out)
}

/// The narration: steps, checks, and the final verdict.
struct Story {
    json: bool,
    steps: Vec<serde_json::Value>,
    passed: usize,
    failed: usize,
}

impl Story {
    fn new(json: bool) -> Self {
        if !json {
            println!(
                "Entente demo: agents' identities, sealed messages and what an attacker can't do.\n"
            );
        }
        Self {
            json,
            steps: Vec::new(),
            passed: 0,
            failed: 0,
        }
    }

    fn step(&mut self, text: &str) {
        if self.json {
            self.steps
                .push(serde_json::json!({ "step": text, "checks": [] }));
        } else {
            println!("\n{text}");
        }
    }

    fn check(&mut self, held: bool, text: &str) {
        if held {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        if self.json {
            let check = serde_json::json!({ "held": held, "what": text });
            match self
                .steps
                .last_mut()
                .and_then(|s| s.get_mut("checks"))
                .and_then(|c| c.as_array_mut())
            {
                Some(checks) => checks.push(check),
                None => self
                    .steps
                    .push(serde_json::json!({ "step": "", "checks": [check] })),
            }
        } else {
            println!("  {} {text}", if held { "ok  " } else { "FAIL" });
        }
    }

    fn finish(self) -> ExitCode {
        let ok = self.failed == 0 && self.passed > 0;
        if self.json {
            println!(
                "{}",
                serde_json::json!({ "ok": ok, "passed": self.passed, "failed": self.failed, "steps": self.steps })
            );
        } else if ok {
            println!("\nAll {} properties held.", self.passed);
        } else {
            println!(
                "\n{} of {} properties did NOT hold.",
                self.failed,
                self.passed + self.failed
            );
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
