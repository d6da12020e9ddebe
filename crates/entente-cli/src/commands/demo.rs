//! `entente demo`: a narrated scenario over a real hub, on a temporary data directory.
//!
//! Everything is the real thing: a hub listening on `127.0.0.1:0` with mutual TLS 1.3, join
//! tokens, agents enrolling over the network, the SDK sealing and signing, the hub routing
//! what it cannot read. The attacks go through [`entente_client::danger`], which puts frames
//! on the wire as a misbehaving agent would. Each property is checked, and the demo exits 0
//! only if every one held.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use entente_audit::{AuditError, Event, Outcome, Verifier, VerifierKey, verify_export};
use entente_ca::{Ca, CaOptions};
use entente_client::{
    ApprovalOutcome, Client, ClientOptions, ErrorKind, Identity, Message, RefusalCode,
    Subscription, danger,
};
use entente_crypto::{KeyBundleBody, Sealer, SealerOptions, VerifiedKeyBundle};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_types::{Principal, TrustDomain};
use entente_wire as wire;
use futures_util::StreamExt as _;
use zeroize::Zeroizing;

use crate::commands::scratch::ScratchHub;

/// How long the demo waits for anything the hub should do at once.
const PATIENCE: Duration = Duration::from_secs(5);
const TRUST_DOMAIN: &str = "demo.entente.local";
/// The demo hub's anomaly window (10 s by default).
const ANOMALY_WINDOW: Duration = Duration::from_millis(500);

pub(crate) fn run(json: bool) -> Result<ExitCode> {
    let mut story = Story::new(json);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = runtime.block_on(scenario(&mut story));
    if let Err(err) = &outcome {
        story.check("scenario", false, &format!("the scenario stopped: {err:#}"));
    }
    Ok(story.finish())
}

async fn scenario(story: &mut Story) -> Result<()> {
    story.step("An operator starts a hub on a fresh data directory.");
    // Anomaly windows of half a second, so that the demo sees the detector act.
    let scratch = ScratchHub::start_configured(TRUST_DOMAIN, |config| {
        config.anomaly.window = ANOMALY_WINDOW;
    })
    .await?;
    let (hub, data, trust) = (&scratch.hub, &scratch.data, &scratch.trust);
    let addr = scratch.addr();
    let td = TrustDomain::new(TRUST_DOMAIN)?;
    story.step(&format!(
        "The hub listens on {addr}. Authorization is Cedar policy, default deny: in \
         policies/default.cedar, `demo-traffic` lets agents of segment `demo` use `demo.>`, \
         `demo-read` lets segment `ops` read it only while holding grant `demo-read`, and the \
         admin may grant and approve; nothing else is permitted."
    ));
    let (old_tls, no_certificate) = tls_probes(addr, trust).await;
    story.check(
        "tls13_only",
        old_tls
            .as_ref()
            .is_err_and(|e| e.contains("ProtocolVersion")),
        &format!(
            "a client offering only TLS 1.2 is refused at the handshake: {}",
            said(old_tls)
        ),
    );
    story.check(
        "mutual_tls",
        no_certificate
            .as_ref()
            .is_err_and(|e| e.contains("CertificateRequired")),
        &format!(
            "a TLS 1.3 client without a certificate is refused by the hub: {}",
            said(no_certificate)
        ),
    );

    story.step(
        "The operator hands out one-time join tokens; alice and bob (segment `demo`) and eve \
         (segment `ops`) enroll over the network with the hub's trust bundle.",
    );
    let agents = scratch.dir().join("agents");
    let mut alice_token = String::new();
    for (segment, name) in [("demo", "alice"), ("demo", "bob"), ("ops", "eve")] {
        let (agent, token) = scratch.token(segment, name).await?;
        let identity = entente_client::enroll(addr, trust, token.as_str()).await?;
        identity.save(&agents.join(name))?;
        story.check(
            "enrolled",
            identity.principal() == &Principal::from(agent),
            &format!(
                "{} enrolled: its keys never left it; it holds an X509-SVID and a CA-signed key bundle",
                identity.principal()
            ),
        );
        if name == "alice" {
            alice_token = token.as_str().to_owned();
        }
    }
    let reuse = entente_client::enroll(addr, trust, &alice_token).await;
    story.check(
        "token_reuse",
        // Refused as a token already used, not for some other reason.
        reuse
            .as_ref()
            .is_err_and(|e| e.to_string().contains("already used")),
        &format!(
            "alice's join token used a second time is refused: {}",
            describe(reuse.err())
        ),
    );

    let alice = connect(&agents, "alice", addr).await?;
    let bob = connect(&agents, "bob", addr).await?;
    let eve = connect(&agents, "eve", addr).await?;

    story.step("Bob listens on `demo.orders.*`; alice publishes three orders; bob answers.");
    let mut bob_orders = bob.subscribe("demo.orders.*").await?;
    let mut alice_receipts = alice.subscribe("demo.receipts").await?;
    let orders = [
        "refund order 1042",
        "ship order 1043 to Lyon",
        "{\"order\":1044,\"status\":\"held\"}",
    ];
    let mut acks = Vec::new();
    for order in orders {
        acks.push(alice.enqueue("demo.orders.eu", order).await?);
    }
    for ack in acks {
        ack.await?;
    }
    let mut read = Vec::new();
    for _ in orders {
        read.push(next_message(&mut bob_orders).await?);
    }
    let texts: Vec<String> = read.iter().map(text).collect();
    story.check(
        "exchange",
        texts == orders && read.iter().all(|m| &m.sender == alice.principal()),
        &format!(
            "bob verified alice's signature and read, in order: {}",
            texts.join(" | ")
        ),
    );
    bob.publish("demo.receipts", "orders 1042-1044 received")
        .await?;
    let receipt = next_message(&mut alice_receipts).await?;
    story.check(
        "exchange",
        text(&receipt) == "orders 1042-1044 received" && &receipt.sender == bob.principal(),
        &format!("alice read bob's answer: {}", text(&receipt)),
    );

    story.step("What the hub sees: alice seals a batch herself, exactly as the SDK does.");
    let bob_bundle = alice.key_bundle(bob.principal()).await?;
    let alice_identity = load(&agents, "alice")?;
    let mut sealer = sealer_for(&alice_identity, "demo.orders.us", &bob_bundle)?;
    let secret: [&[u8]; 2] = [b"wire 20000 EUR to ACME", b"pin code 4711"];
    let (sender_key, batch) = sealer.seal(&secret)?;
    let publish = wire::Publish {
        request_id: 1,
        sender_keys: vec![sender_key],
        batches: vec![batch.clone()],
        purpose: String::new(),
    };
    let frame = wire::encode(&publish);
    let payload_bytes: usize = secret.iter().map(|m| m.len()).sum();
    story.check(
        "no_plaintext",
        secret.iter().all(|m| !contains(&frame, m)) && !contains(&frame, b"ACME"),
        &format!(
            "the {} bytes of the frame (for {payload_bytes} bytes of payload) carry headers, \
             a sender key wrapped for bob, ciphertext and one signature: no payload text",
            frame.len()
        ),
    );
    danger::danger_publish_raw(&alice, publish.clone()).await?;
    let first = next_message(&mut bob_orders).await?;
    let second = next_message(&mut bob_orders).await?;
    story.check(
        "exchange",
        first.payload == secret[0] && second.payload == secret[1],
        &format!(
            "the hub routed it unchanged and bob opened it: {} | {}",
            text(&first),
            text(&second)
        ),
    );
    let on_disk = scan_for(&data.root, &secret)?;
    story.check(
        "no_plaintext",
        on_disk.is_empty(),
        &format!(
            "nothing the hub wrote to disk (its store, audit log and keys) contains the messages{}",
            if on_disk.is_empty() {
                String::new()
            } else {
                format!(" (found in {on_disk:?})")
            }
        ),
    );

    story.step(
        "Eve, of segment `ops`, reaches across segments into `demo.>`: only a policy marked \
         @cross_segment could let her, and none does.",
    );
    let denied = eve.subscribe("demo.>").await.err();
    story.check(
        "denied",
        denied.as_ref().is_some_and(refused_across_segments),
        &format!(
            "eve's subscription to `demo.>` is refused across segments, no policy permits it: {}",
            describe(denied)
        ),
    );
    let denied = eve
        .publish_to(
            "demo.orders.eu",
            "cancel every order",
            std::slice::from_ref(&bob_bundle),
        )
        .await
        .err();
    story.check(
        "denied",
        denied.as_ref().is_some_and(refused_across_segments),
        &format!(
            "eve's publish to `demo.orders.eu` is refused across segments, no policy permits it: {}",
            describe(denied)
        ),
    );

    just_in_time(story, &scratch, &alice, &eve).await?;
    held_for_approval(story, &scratch, &alice, &bob).await?;

    story.step(
        "Eve turns forger: she seals an order with her own keys and signs it as alice, \
         sending it over her own connection.",
    );
    let eve_identity = load(&agents, "eve")?;
    let (mut forger, forged_key) = Sealer::new(
        alice.principal().clone(),
        alice_identity.key_bundle().epoch(),
        eve_identity.message_keys().clone(),
        "demo.orders.eu".parse()?,
        std::slice::from_ref(&bob_bundle),
        SealerOptions::default(),
        now_ms(),
    )?;
    let forged = forger.seal_batch(&[b"pay eve 10000 EUR"], None, now_ms())?;
    let before = hub.stats().forged_senders;
    let verdict = danger::danger_publish_raw(
        &eve,
        wire::Publish {
            request_id: 1,
            sender_keys: vec![forged_key],
            batches: vec![forged],
            purpose: String::new(),
        },
    )
    .await
    .err();
    story.check(
        "forged_sender",
        verdict
            .as_ref()
            .is_some_and(|e| e.refusal_code() == Some(RefusalCode::ForgedSender))
            && hub.stats().forged_senders > before,
        &format!(
            "the hub refuses it — the sender must be the connection's certified identity — \
             and counts it: {}",
            describe(verdict)
        ),
    );

    story.step("An attacker replays alice's batch, then alters one bit of a new one.");
    let before = hub.stats().replays;
    let verdict = danger::danger_publish_raw(
        &alice,
        wire::Publish {
            request_id: 2,
            sender_keys: Vec::new(),
            batches: vec![batch],
            purpose: String::new(),
        },
    )
    .await
    .err();
    story.check(
        "replay",
        verdict
            .as_ref()
            .is_some_and(|e| e.refusal_code() == Some(RefusalCode::Replay))
            && hub.stats().replays > before,
        &format!(
            "the already-delivered batch sent again is refused and counted: {}",
            describe(verdict)
        ),
    );
    let (_, mut tampered) = sealer.seal(&[b"refund order 1045"])?;
    if let Some(envelope) = tampered.envelopes.first_mut()
        && let Some(byte) = envelope.ciphertext.first_mut()
    {
        *byte ^= 1;
    }
    let routed = danger::danger_publish_raw(
        &alice,
        wire::Publish {
            request_id: 3,
            sender_keys: Vec::new(),
            batches: vec![tampered],
            purpose: String::new(),
        },
    )
    .await;
    alice
        .publish("demo.orders.eu", "all orders for today are in")
        .await?;
    let (rejected, next) = skip_rejections(&mut bob_orders).await?;
    story.check(
        "tamper",
        (routed.is_err() || rejected.is_some()) && text(&next) == "all orders for today are in",
        &format!(
            "the altered batch never reaches bob's application: {}; bob's next message is \
             alice's genuine one",
            match (&routed, &rejected) {
                (Err(e), _) => format!("the hub refused it ({e})"),
                (Ok(()), Some(e)) => format!("the hub cannot tell, bob's SDK rejects it ({e})"),
                (Ok(()), None) => "it was accepted".to_owned(),
            }
        ),
    );

    story.step("Key bundles are trusted for their CA signature, not for whoever serves them.");
    let fake = rogue_bundle(scratch.dir(), &td, alice_identity.key_bundle())?;
    let verdict = bob.trust_key_bundle(fake).err();
    story.check(
        "foreign_bundle",
        verdict.is_some(),
        &format!(
            "a key bundle for alice signed by another CA is refused: {}",
            describe(verdict)
        ),
    );

    story.step("The operator revokes bob while he is connected and listening.");
    let admin = admin(&scratch).await?;
    let closed = admin
        .revoke(std::slice::from_ref(bob.principal()), &[])
        .await?;
    admin.close().await;
    let end = tokio::time::timeout(PATIENCE, bob_orders.next())
        .await
        .ok()
        .flatten();
    let ended = match &end {
        Some(Err(e))
            if e.kind() == ErrorKind::Closed && e.to_string().contains("PERMISSION_DENIED") =>
        {
            Some(e.to_string())
        }
        _ => None,
    };
    story.check(
        "revoked",
        closed >= 1 && ended.is_some(),
        &format!(
            "{closed} live connection(s) closed; bob's subscription ends at once: {}",
            ended.unwrap_or_else(|| format!("{end:?}"))
        ),
    );
    let before = hub.stats().handshakes_failed;
    let again = Client::connect(load(&agents, "bob")?, addr, ClientOptions::default())
        .await
        .err();
    // The hub counts the refused handshake on its side, possibly just after bob sees it.
    let refused_at_handshake = eventually(|| hub.stats().handshakes_failed > before).await;
    story.check(
        "revoked",
        again.as_ref().is_some_and(|e| {
            e.kind() == ErrorKind::Tls && e.to_string().contains("CertificateRevoked")
        }) && refused_at_handshake,
        &format!(
            "bob's reconnection is refused at the TLS handshake: {}",
            describe(again)
        ),
    );
    let still = alice.publish("demo.receipts", "alice is still here").await;
    let echo = match still {
        Ok(()) => next_message(&mut alice_receipts).await.map(|m| text(&m)),
        Err(e) => Err(e.into()),
    };
    story.check(
        "revoked",
        echo.as_ref()
            .is_ok_and(|t| t.as_str() == "alice is still here"),
        &format!(
            "alice is unaffected and goes on publishing{}",
            echo.err().map(|e| format!(": {e:#}")).unwrap_or_default()
        ),
    );

    quarantined(story, &scratch, &alice, &eve).await?;

    for client in [&alice, &bob, &eve] {
        client.close().await;
    }
    audit_trail(story, hub, scratch.dir(), bob.principal()).await?;
    scratch.shutdown().await?;
    Ok(())
}

/// Eve's credential, stolen, probes channels it was never given: the hub throttles her, then
/// quarantines her, and tells the administrator why; alice goes on.
async fn quarantined(
    story: &mut Story,
    scratch: &ScratchHub,
    alice: &Client,
    eve: &Client,
) -> Result<()> {
    story.step(
        "Eve's credential is stolen: the thief probes channels eve was never given, one \
         after another. The hub scores every agent's traffic against what it usually does.",
    );
    let started = std::time::Instant::now();
    let (mut probes, mut throttled) = (0u32, None);
    let ended = loop {
        if started.elapsed() > PATIENCE * 4 {
            break None;
        }
        match eve.subscribe(&format!("demo.payroll.p{probes}")).await {
            Err(e) if e.kind() == ErrorKind::Limited && throttled.is_none() => {
                throttled = Some((probes, e.to_string()));
            }
            Err(e) if e.kind() == ErrorKind::Closed || e.to_string().contains("quarantined") => {
                break Some(e.to_string());
            }
            Err(_) => {}
            Ok(_) => bail!("a probe of `demo.payroll` was allowed"),
        }
        probes += 1;
    };
    story.check(
        "throttled",
        throttled
            .as_ref()
            .is_some_and(|(_, e)| e.contains("anomaly-throttle")),
        &match &throttled {
            Some((n, e)) => format!("after {n} refused probes her risk score throttles her: {e}"),
            None => "she was never throttled".to_owned(),
        },
    );
    let admin = admin(scratch).await?;
    let listed = admin.quarantine(wire::QuarantineRequest::default()).await?;
    admin.close().await;
    let entry = listed
        .quarantined
        .iter()
        .find(|q| q.principal == eve.principal().as_str());
    story.check(
        "quarantined",
        ended.as_ref().is_some_and(|e| e.contains("quarantined")) && entry.is_some(),
        &format!(
            "then quarantines her: her connection is closed ({}); the administrator's \
             `entente quarantine list` shows why: {}",
            ended.unwrap_or_else(|| "it was not".to_owned()),
            entry.map_or_else(
                || "she is not listed".to_owned(),
                |q| format!("risk {}, {}", q.risk, q.evidence)
            )
        ),
    );
    let again = Client::connect(
        load(&scratch.dir().join("agents"), "eve")?,
        scratch.addr(),
        ClientOptions::default(),
    )
    .await
    .err();
    story.check(
        "quarantined",
        again
            .as_ref()
            .is_some_and(|e| e.to_string().contains("quarantined")),
        &format!(
            "eve can't come back until an administrator lifts it: {}",
            describe(again)
        ),
    );
    let still = alice.publish("demo.receipts", "alice again").await;
    story.check(
        "quarantined",
        still.is_ok(),
        &format!(
            "alice, who behaves as usual, is untouched{}",
            still.err().map(|e| format!(": {e}")).unwrap_or_default()
        ),
    );
    Ok(())
}

/// Everything above is in the hub's audit log: the export verifies under the checkpoint key,
/// and one changed byte is caught at its record.
async fn audit_trail(
    story: &mut Story,
    hub: &entente_hub::HubHandle,
    dir: &Path,
    bob: &Principal,
) -> Result<()> {
    story.step(
        "Every decision, delivery and administrative act went into the hub's tamper-evident \
         audit log. The operator exports it for an auditor, who verifies it offline, as \
         `entente audit verify EXPORT --key VKEY` does.",
    );
    let export = dir.join("audit.export");
    hub.export_audit(&export)
        .await?
        .context("the demo hub keeps an audit log")?;
    let key = hub
        .audit_verifier_key()
        .context("the demo hub keeps an audit log")?;
    let verifier = Verifier::new(VerifierKey::parse(&key)?);
    let verified = verify_export(&export, &verifier);
    let (records, size) = verified
        .as_ref()
        .map_or((0, 0), |v| (v.record_count(), v.size()));
    // The records themselves, as the hub reads them; each is in the verified export.
    let (kinds, denials, bob_recorded) = match hub.audit_records(0, records).await? {
        Some((all, _)) => {
            let proven = verified.as_ref().is_ok_and(|v| {
                all.iter()
                    .all(|r| v.find_record(r).ok().flatten().is_some())
            });
            let mut kinds: Vec<&str> = all.iter().map(|r| r.kind().as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            let denials = all.iter().filter(|r| r.outcome == Outcome::Denied).count();
            let bob_recorded = all.iter().any(|r| {
                matches!(&r.event, Event::Revocation(v) if v.principal.as_clear() == Some(bob.as_str()))
            });
            (kinds.join(", "), denials, bob_recorded && proven)
        }
        None => (String::new(), 0, false),
    };
    story.check(
        "audit_verified",
        verified.is_ok() && records > 0 && bob_recorded && denials > 0,
        &format!(
            "{records} records in {size} sealed batches verify under the checkpoint key \
             `{key}`: {kinds}; {denials} denials, bob's revocation among them; the latest \
             checkpoint is signed for tree size {size}{}",
            verified
                .as_ref()
                .err()
                .map(|e| format!(" (but: {e})"))
                .unwrap_or_default()
        ),
    );

    // An insider edits one byte of the export: bob's name in his revocation record.
    let mut bytes = std::fs::read(&export).context("reading the export")?;
    let at = bytes
        .windows(bob.as_str().len())
        .rposition(|w| w == bob.as_str().as_bytes())
        .context("bob's name is in the export")?;
    if let Some(byte) = bytes.get_mut(at + bob.as_str().len() - 1) {
        *byte ^= 0x01;
    }
    let tampered = dir.join("audit.tampered.export");
    std::fs::write(&tampered, &bytes).context("writing the tampered copy")?;
    let caught = verify_export(&tampered, &verifier).err();
    story.check(
        "audit_tamper_caught",
        matches!(caught, Some(AuditError::RecordCorrupt { .. })),
        &format!(
            "one byte changed in a copy is caught, at its place: {}",
            describe(caught)
        ),
    );
    Ok(())
}

/// How long eve asks for `demo-read`: short, so that the demo sees it end.
const JIT_GRANT: Duration = Duration::from_secs(3);

/// Eve asks for `demo-read` just in time; she can't approve it herself; the admin approves
/// with a signed statement; eve reads `demo.>` until the grant ends, and then her
/// subscription ends with nobody acting.
async fn just_in_time(
    story: &mut Story,
    scratch: &ScratchHub,
    alice: &Client,
    eve: &Client,
) -> Result<()> {
    story.step(
        "Eve needs the orders for an incident. She asks just in time for grant `demo-read`, \
         for 3 seconds, with a reason; the admin must approve.",
    );
    let request = eve
        .request_grant("demo-read", JIT_GRANT, "INC-7: check order 1043")
        .await?;
    story.check(
        "jit_request",
        request.state == "pending" && request.required == 1,
        &format!(
            "the hub records request {} for `demo-read`, pending, {} approval needed",
            request.id, request.required
        ),
    );
    let own = eve.approve(&request.id).await.err();
    story.check(
        "separation_of_duties",
        own.as_ref().is_some_and(|e| {
            e.kind() == ErrorKind::Denied && e.to_string().contains("its own request")
        }),
        &format!(
            "eve's approval of her own request is refused: {}",
            describe(own)
        ),
    );
    let admin = admin(scratch).await?;
    let approved = admin.approve(&request.id).await;
    admin.close().await;
    let grant = match approved {
        Ok(ApprovalOutcome::Granted(grant)) => Some(grant),
        _ => None,
    };
    story.check(
        "jit_approved",
        grant.is_some(),
        &match &grant {
            Some(grant) => format!(
                "the admin signs an approval bound to {} and its hash; the hub verifies it \
                 against the admin's key bundle and grants `demo-read` to eve for 3 s ({})",
                request.id, grant.id
            ),
            None => "the admin's approval did not grant it".to_owned(),
        },
    );
    let mut eve_orders = eve.subscribe("demo.>").await?;
    let eve_bundle = alice.key_bundle(eve.principal()).await?;
    alice
        .publish_to(
            "demo.incidents",
            "order 1043: held at the Lyon depot",
            std::slice::from_ref(&eve_bundle),
        )
        .await?;
    let read = next_message(&mut eve_orders).await.map(|m| text(&m));
    story.check(
        "jit_access",
        read.as_ref()
            .is_ok_and(|t| t == "order 1043: held at the Lyon depot"),
        &format!(
            "with the grant, eve subscribes to `demo.>` and reads alice's note on `demo.incidents`: {}",
            match &read {
                Ok(t) => t.clone(),
                Err(e) => format!("{e:#}"),
            }
        ),
    );
    let end = tokio::time::timeout(JIT_GRANT + PATIENCE, eve_orders.next())
        .await
        .ok()
        .flatten();
    let ended = match &end {
        Some(Err(e)) if e.kind() == ErrorKind::Denied => Some(e.to_string()),
        _ => None,
    };
    story.check(
        "grant_expired",
        ended.is_some(),
        &format!(
            "when the grant ends, the hub ends eve's subscription, with nobody acting: {}",
            ended.unwrap_or_else(|| format!("{end:?}"))
        ),
    );
    Ok(())
}

/// Alice pays on `demo.payments.out`, which `default.cedar` holds for one approval: the hub
/// keeps the sealed message; alice can't approve it herself; the admin sees who, where, how
/// big and why, never the payload, and approves with a signed statement; then bob reads it.
async fn held_for_approval(
    story: &mut Story,
    scratch: &ScratchHub,
    alice: &Client,
    bob: &Client,
) -> Result<()> {
    story.step(
        "Alice pays an invoice on `demo.payments.out`, a high-stakes channel: the hub holds \
         each message there, sealed, until someone other than its sender approves it.",
    );
    let mut bob_payments = bob.subscribe("demo.payments.>").await?;
    let payment = "pay invoice 42: 1200 EUR to ACME";
    let held = alice
        .publish_with_purpose("demo.payments.out", payment, "invoice 42, due today")
        .await?;
    let id = held
        .as_ref()
        .map(|h| h.message_id.clone())
        .unwrap_or_default();
    // Bob gets nothing while it is held (a second is ample for a routed message).
    let early = tokio::time::timeout(Duration::from_secs(1), bob_payments.next())
        .await
        .ok();
    story.check(
        "held",
        held.is_some() && early.is_none(),
        &match &early {
            None => format!(
                "the hub acknowledges alice's payment as held for approval ({id}); bob gets \
                 nothing yet"
            ),
            Some(_) => format!("bob got something while the payment was held ({id})"),
        },
    );
    let own = alice.approve(&id).await.err();
    story.check(
        "separation_of_duties",
        own.as_ref()
            .is_some_and(|e| e.kind() == ErrorKind::Denied && e.to_string().contains("separation")),
        &format!(
            "alice's approval of her own payment is refused: {}",
            describe(own)
        ),
    );
    let admin = admin(scratch).await?;
    let shown = admin.held().await?;
    let listed = shown.iter().find(|h| h.message_id == id);
    let sealed = listed.is_some_and(|h| {
        h.purpose == "invoice 42, due today" && !contains(&wire::encode(h), payment.as_bytes())
    });
    story.check(
        "approver_view",
        sealed,
        &match listed {
            Some(h) => format!(
                "the admin sees sender {}, channel {}, {} bytes and the purpose `{}`, not the payload",
                h.sender, h.channel, h.size, h.purpose
            ),
            None => "the admin does not see the held payment".to_owned(),
        },
    );
    let approved = admin.approve(&id).await;
    admin.close().await;
    let released = matches!(approved, Ok(ApprovalOutcome::Released { .. }));
    let read = if released {
        next_message(&mut bob_payments).await.map(|m| text(&m))
    } else {
        Err(anyhow!("not released: {approved:?}"))
    };
    story.check(
        "released",
        read.as_ref().is_ok_and(|t| t == payment),
        &format!(
            "the admin signs an approval bound to the envelope's hash; the hub releases it and \
             bob reads: {}",
            match &read {
                Ok(t) => t.clone(),
                Err(e) => format!("{e:#}"),
            }
        ),
    );
    Ok(())
}

/// Two handshakes the hub must refuse: a client offering only TLS 1.2, and a TLS 1.3 client
/// without a certificate dialing the hub's name (not enrollment's). Each verifies the hub
/// as agents do; `Ok` says what the hub let through.
async fn tls_probes(
    addr: std::net::SocketAddr,
    trust: &entente_ca::TrustBundle,
) -> (Result<String, String>, Result<String, String>) {
    use tokio::io::AsyncReadExt as _;
    let connect = |versions: &'static [&'static rustls::SupportedProtocolVersion]| async move {
        let verifier = entente_hub::client_tls::HubServerVerifier::new(trust.clone())
            .map_err(|e| format!("{e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| format!("{e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let name = entente_hub::client_tls::server_name(trust).map_err(|e| format!("{e}"))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
            .await
            .map_err(|_| "the handshake did not end".to_owned())?
            .map_err(|e| format!("{e}"))?;
        // TLS 1.3: the hub checks the client's certificate after the client's side of the
        // handshake ended, and says so in an alert read next. Silence is a session let in.
        let mut byte = [0u8; 1];
        match tokio::time::timeout(PATIENCE, tls.read(&mut byte)).await {
            Ok(Err(e)) => Err(format!("{e}")),
            Ok(Ok(0)) => Err("the hub closed the connection".to_owned()),
            Ok(Ok(_)) => Ok("the hub sent data".to_owned()),
            Err(_) => Ok("the hub kept the connection open".to_owned()),
        }
    };
    static TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    (connect(TLS12).await, connect(TLS13).await)
}

/// What a probe got: the refusal, or what was let through.
fn said(outcome: Result<String, String>) -> String {
    match outcome {
        Ok(through) => format!("NOT refused: {through}"),
        Err(refused) => refused,
    }
}

/// Whether the hub refused as `DENIED` because no policy permits a cross-segment request.
fn refused_across_segments(error: &entente_client::Error) -> bool {
    error.refusal_code() == Some(RefusalCode::Denied)
        && error.refusal_reason().is_some_and(|reason| {
            reason.contains("no policy permits it") && reason.contains("across segments")
        })
}

/// The channel sealer alice's SDK would hold, and the sender key it would send first.
struct RawSealer {
    sealer: Sealer,
    sender_key: wire::SenderKey,
}

impl RawSealer {
    /// Seals `payloads` as one signed batch, with the channel's sender key to send along.
    fn seal(&mut self, payloads: &[&[u8]]) -> Result<(wire::SenderKey, wire::SignedBatch)> {
        let batch = self.sealer.seal_batch(payloads, None, now_ms())?;
        Ok((self.sender_key.clone(), batch))
    }
}

fn sealer_for(
    identity: &Identity,
    channel: &str,
    recipient: &VerifiedKeyBundle,
) -> Result<RawSealer> {
    let (sealer, sender_key) = Sealer::new(
        identity.principal().clone(),
        identity.key_bundle().epoch(),
        identity.message_keys().clone(),
        channel.parse()?,
        &[recipient.clone(), identity.key_bundle().clone()],
        SealerOptions::default(),
        now_ms(),
    )?;
    Ok(RawSealer { sealer, sender_key })
}

/// A key bundle for `genuine`'s principal with its keys, signed by a CA of the same trust
/// domain name that the hub's agents don't trust.
fn rogue_bundle(
    dir: &Path,
    td: &TrustDomain,
    genuine: &VerifiedKeyBundle,
) -> Result<wire::KeyBundle> {
    let mut key = Zeroizing::new([0u8; 32]);
    fill_random(&mut *key)?;
    let store = LocalKeyStore::create(
        &dir.join("rogue"),
        &Unlock::Key(key),
        Argon2Params::default(),
    )?;
    let rogue = Ca::init(Arc::new(store), td, CaOptions::default(), SystemTime::now())?;
    let body: KeyBundleBody = genuine.body().clone();
    Ok(rogue.sign_key_bundle(body)?)
}

/// The hub's administrator, connected.
async fn admin(scratch: &ScratchHub) -> Result<Client> {
    let admin = Identity::load(&scratch.data.admin_dir(), SystemTime::now())
        .context("loading the hub's admin identity")?;
    Ok(Client::connect(admin, scratch.addr(), ClientOptions::default()).await?)
}

async fn connect(agents: &Path, name: &str, addr: std::net::SocketAddr) -> Result<Client> {
    Client::connect(load(agents, name)?, addr, ClientOptions::default())
        .await
        .with_context(|| format!("connecting {name}"))
}

fn load(agents: &Path, name: &str) -> Result<Identity> {
    Identity::load(&agents.join(name), SystemTime::now())
        .with_context(|| format!("loading {name}'s identity"))
}

/// Whether `condition` holds within [`PATIENCE`].
async fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// The next message of `subscription`, which must come within [`PATIENCE`] and verify.
async fn next_message(subscription: &mut Subscription) -> Result<Message> {
    match tokio::time::timeout(PATIENCE, subscription.next()).await {
        Err(_) => bail!("no message arrived within {PATIENCE:?}"),
        Ok(None) => bail!("the subscription ended"),
        Ok(Some(item)) => Ok(item?),
    }
}

/// The next verified message, and the first rejection reported before it, if any.
async fn skip_rejections(
    subscription: &mut Subscription,
) -> Result<(Option<entente_client::Error>, Message)> {
    let mut rejected = None;
    loop {
        match tokio::time::timeout(PATIENCE, subscription.next()).await {
            Err(_) => bail!("no message arrived within {PATIENCE:?}"),
            Ok(None) => bail!("the subscription ended"),
            Ok(Some(Ok(message))) => return Ok((rejected, message)),
            Ok(Some(Err(e))) if e.kind() == ErrorKind::Rejected => {
                rejected.get_or_insert(e);
            }
            Ok(Some(Err(e))) => return Err(e.into()),
        }
    }
}

/// Files under `root` that contain any of `needles`.
fn scan_for(root: &Path, needles: &[&[u8]]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && needles.iter().any(|n| contains(&bytes, n))
            {
                found.push(path);
            }
        }
    }
    Ok(found)
}

fn text(message: &Message) -> String {
    String::from_utf8_lossy(&message.payload).into_owned()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn describe<E: std::fmt::Display>(err: Option<E>) -> String {
    err.map_or_else(|| "no error".to_owned(), |e| e.to_string())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fill_random(out: &mut [u8]) -> Result<()> {
    use aws_lc_rs::rand::SecureRandom as _;
    aws_lc_rs::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| anyhow!("the system random source failed"))
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
            announceln!(
                "Entente demo: a real hub on 127.0.0.1, three agents, and what an attacker can't do."
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
            announceln!("\n{text}");
        }
    }

    /// Records whether a property held; `property` names it for scripts.
    fn check(&mut self, property: &str, held: bool, text: &str) {
        if held {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        if self.json {
            let check = serde_json::json!({ "property": property, "held": held, "what": text });
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
            announceln!("  {} {text}", if held { "ok  " } else { "FAIL" });
        }
    }

    fn finish(self) -> ExitCode {
        let ok = self.failed == 0 && self.passed > 0;
        if self.json {
            super::announce_json(
                &serde_json::json!({ "ok": ok, "passed": self.passed, "failed": self.failed, "steps": self.steps }),
            );
        } else if ok {
            announceln!("\nAll {} properties held.", self.passed);
        } else {
            announceln!(
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
