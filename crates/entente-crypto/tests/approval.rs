#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Approval statements (PROTOCOL.md §11): signing and verification against key bundles and bare
//! keys, every refusal, a property test that a verified approval is always signed by the
//! approver it names, and the test vector `test-vectors/approval.json`.
//!
//! [`build`] makes the vector from fixed inputs and `regenerate_approval_vector` (ignored) writes
//! it. The checks read the file and recompute every output with this crate and with [`spec`],
//! an encoding written from the protocol text alone. Ed25519 is deterministic, so signatures
//! are compared byte for byte.

mod common;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use common::vectors::{Hex, read_vector, write};
use common::{Agent, DAY, NOW, TestCa};
use entente_crypto::{
    ApprovalError, ApprovalIn, ApprovalStatement, GrantRequestBody, KeyBundleBody, KeyBundleIn,
    MessageKeys, ObjectKind, SignedApproval, Verdict, approval::MAX_CLOCK_SKEW_MS,
};
use entente_types::Principal;
use proptest::prelude::*;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

// Relative to the package root, where cargo runs tests.
const APPROVAL: &str = "../../test-vectors/approval.json";

fn statement_by(agent: &Agent, verdict: Verdict, signed_at_ms: u64) -> ApprovalStatement {
    ApprovalStatement {
        verdict,
        kind: ObjectKind::GrantRequest,
        object_id: "r-1".to_owned(),
        object_hash: [0x5a; 32],
        approver: agent.id.clone(),
        key_epoch: agent.bundle.epoch(),
        signed_at_ms,
    }
}

fn signed(agent: &Agent, statement: ApprovalStatement) -> ApprovalIn {
    statement.sign(&agent.keys).unwrap().into()
}

// === verification ===

#[test]
fn a_statement_verifies_against_its_approvers_bundle() {
    let ca = TestCa::new();
    let ann = Agent::new(&ca, "ann");
    for verdict in [Verdict::Approve, Verdict::Reject] {
        let statement = statement_by(&ann, verdict, NOW);
        let verified = signed(&ann, statement.clone())
            .verify(&ann.bundle, NOW)
            .unwrap();
        assert_eq!(verified.statement(), &statement);
        assert_eq!(verified.verdict(), verdict);
        assert_eq!(verified.approver(), &ann.id);
    }
}

#[test]
fn the_bundle_must_be_the_approvers_of_that_epoch_and_valid() {
    let ca = TestCa::new();
    let ann = Agent::new(&ca, "ann");
    let bob = Agent::new(&ca, "bob");

    // Ann's statement checked against Bob's bundle: refused before any signature check.
    let err = signed(&ann, statement_by(&ann, Verdict::Approve, NOW))
        .verify(&bob.bundle, NOW)
        .unwrap_err();
    assert_eq!(
        err,
        ApprovalError::SignerMismatch {
            claimed: ann.id.as_str().to_owned(),
            signer: bob.id.as_str().to_owned()
        }
    );
    // Signed by Bob, claiming Ann: Ann's bundle does not verify it, Bob's is not Ann's.
    let forged = signed(&bob, statement_by(&ann, Verdict::Approve, NOW));
    assert_eq!(
        forged.clone().verify(&ann.bundle, NOW).unwrap_err(),
        ApprovalError::BadSignature
    );
    assert!(matches!(
        forged.verify(&bob.bundle, NOW).unwrap_err(),
        ApprovalError::SignerMismatch { .. }
    ));

    let mut other_epoch = statement_by(&ann, Verdict::Approve, NOW);
    other_epoch.key_epoch = 2;
    assert_eq!(
        signed(&ann, other_epoch)
            .verify(&ann.bundle, NOW)
            .unwrap_err(),
        ApprovalError::KeyEpochMismatch {
            statement: 2,
            bundle: 1
        }
    );

    let statement = statement_by(&ann, Verdict::Approve, NOW);
    assert_eq!(
        signed(&ann, statement.clone())
            .verify(&ann.bundle, NOW + 2 * DAY)
            .unwrap_err(),
        ApprovalError::BundleExpired
    );
}

#[test]
fn a_statement_from_the_future_is_refused() {
    let ca = TestCa::new();
    let ann = Agent::new(&ca, "ann");
    let ahead = NOW + MAX_CLOCK_SKEW_MS;
    signed(&ann, statement_by(&ann, Verdict::Approve, ahead))
        .verify(&ann.bundle, NOW)
        .unwrap();
    assert_eq!(
        signed(&ann, statement_by(&ann, Verdict::Approve, ahead + 1))
            .verify(&ann.bundle, NOW)
            .unwrap_err(),
        ApprovalError::FromTheFuture {
            signed_at_ms: ahead + 1,
            now_ms: NOW
        }
    );
}

#[test]
fn signatures_and_object_ids_are_checked_for_form() {
    let ca = TestCa::new();
    let ann = Agent::new(&ca, "ann");
    let statement = statement_by(&ann, Verdict::Approve, NOW);
    for len in [0, 63, 65] {
        assert_eq!(
            ApprovalIn::new(statement.clone(), &vec![0; len]).unwrap_err(),
            ApprovalError::SignatureLength(len)
        );
    }
    let mut bad_id = statement.clone();
    bad_id.object_id = "r 1".to_owned();
    assert_eq!(
        ApprovalIn::new(bad_id, &[0; 64]).unwrap_err(),
        ApprovalError::BadObjectId
    );
    // All zeros is not a signature.
    assert_eq!(
        ApprovalIn::new(statement, &[0; 64])
            .unwrap()
            .verify(&ann.bundle, NOW)
            .unwrap_err(),
        ApprovalError::BadSignature
    );
}

#[test]
fn the_digest_identifies_the_statement() {
    let ca = TestCa::new();
    let ann = Agent::new(&ca, "ann");
    let verify = |s: ApprovalStatement| signed(&ann, s).verify(&ann.bundle, NOW).unwrap();
    let a = verify(statement_by(&ann, Verdict::Approve, NOW));
    let again = verify(statement_by(&ann, Verdict::Approve, NOW));
    let later = verify(statement_by(&ann, Verdict::Approve, NOW + 1));
    assert_eq!(a.digest(), again.digest());
    assert_ne!(a.digest(), later.digest());
}

/// Flips one field of a statement.
fn mutate(s: &mut ApprovalStatement, field: u8, other: &Principal) {
    match field % 7 {
        0 => {
            s.verdict = match s.verdict {
                Verdict::Approve => Verdict::Reject,
                Verdict::Reject => Verdict::Approve,
            }
        }
        1 => {
            s.kind = match s.kind {
                ObjectKind::GrantRequest => ObjectKind::Envelope,
                ObjectKind::Envelope => ObjectKind::GrantRequest,
            }
        }
        2 => s.object_id.push('0'),
        3 => s.object_hash[usize::from(field) % 32] ^= 1,
        4 => s.approver = other.clone(),
        5 => s.key_epoch ^= 1,
        _ => s.signed_at_ms ^= 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Verified means signed by the approver it names: a statement with any one field changed
    /// after signing never verifies, under the signer's key or anyone else's.
    #[test]
    fn verified_means_signed_by_the_named_approver(
        field in 0u8..7,
        id in "[a-z0-9-]{1,20}",
        hash in any::<[u8; 32]>(),
        at in NOW - DAY..NOW,
        reject in any::<bool>(),
    ) {
        let keys = MessageKeys::generate().unwrap();
        let ann = Principal::parse("spiffe://acme.internal/human/ann").unwrap();
        let bob = Principal::parse("spiffe://acme.internal/human/bob").unwrap();
        let statement = ApprovalStatement {
            verdict: if reject { Verdict::Reject } else { Verdict::Approve },
            kind: ObjectKind::GrantRequest,
            object_id: id,
            object_hash: hash,
            approver: ann.clone(),
            key_epoch: 1,
            signed_at_ms: at,
        };
        let signed = statement.clone().sign(&keys).unwrap();
        let verified = ApprovalIn::from(signed.clone())
            .verify_with_key(&ann, &keys.ed25519_public(), NOW)
            .unwrap();
        prop_assert_eq!(verified.statement(), &statement);

        let mut changed = statement;
        mutate(&mut changed, field, &bob);
        let approver = changed.approver.clone();
        let result = ApprovalIn::new(changed, signed.signature())
            .unwrap()
            .verify_with_key(&approver, &keys.ed25519_public(), NOW);
        prop_assert_eq!(result.unwrap_err(), ApprovalError::BadSignature);
    }
}

// === grant requests ===

#[test]
fn grant_request_bytes_follow_the_protocol() {
    let body = request_body();
    assert_eq!(body.canonical_bytes(), spec::grant_request(&body));
    // Any field changes the hash.
    let hash = body.hash();
    let changed = [
        GrantRequestBody { id: "r-8", ..body },
        GrantRequestBody {
            requester: "spiffe://acme.internal/agent/ops/bob",
            ..body
        },
        GrantRequestBody {
            name: "payments-read",
            ..body
        },
        GrantRequestBody {
            duration_ms: body.duration_ms + 1,
            ..body
        },
        GrantRequestBody {
            reason: "deploy the payments fix!",
            ..body
        },
        GrantRequestBody {
            created_at_ms: body.created_at_ms + 1,
            ..body
        },
        GrantRequestBody {
            expires_at_ms: body.expires_at_ms + 1,
            ..body
        },
    ];
    for other in changed {
        assert_ne!(other.hash(), hash, "{other:?}");
    }
}

// === the vector ===

/// `approval.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ApprovalVector {
    description: String,
    approver: Approver,
    grant_request: GrantRequestVector,
    statements: Vec<StatementCase>,
    verify_at_ms: u64,
    tampered: Vec<TamperedCase>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Approver {
    principal: String,
    /// `MessageKeys::to_secret_bytes`: the Ed25519 seed, then the X25519 secret.
    message_keys_secret: Hex,
    ed25519_public: Hex,
    key_epoch: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct GrantRequestVector {
    id: String,
    requester: String,
    name: String,
    duration_ms: u64,
    reason: String,
    created_at_ms: u64,
    expires_at_ms: u64,
    canonical_bytes: Hex,
    /// SHA-256 of `canonical_bytes`.
    hash: Hex,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatementFields {
    verdict: String,
    kind: String,
    object_id: String,
    object_hash: Hex,
    approver: String,
    key_epoch: u64,
    signed_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StatementCase {
    description: String,
    statement: StatementFields,
    signing_input: Hex,
    signature: Hex,
}

#[derive(Debug, Serialize, Deserialize)]
struct TamperedCase {
    description: String,
    statement: StatementFields,
    signature: Hex,
    /// `ApprovalError`, as `Debug` prints it, when verified with the approver's key.
    error: String,
}

const ANN: &str = "spiffe://acme.internal/human/ann";
const ALICE: &str = "spiffe://acme.internal/agent/ops/alice";
const BOB: &str = "spiffe://acme.internal/human/bob";

fn ann_secret() -> [u8; 64] {
    std::array::from_fn(|i| 0x20u8.wrapping_add(i as u8))
}

fn request_body() -> GrantRequestBody<'static> {
    GrantRequestBody {
        id: "r-7",
        requester: ALICE,
        name: "payments-write",
        duration_ms: 3_600_000,
        reason: "deploy the payments fix (INC-42)",
        created_at_ms: NOW,
        expires_at_ms: NOW + 3_600_000,
    }
}

impl StatementFields {
    fn of(s: &ApprovalStatement) -> Self {
        Self {
            verdict: s.verdict.as_str().to_owned(),
            kind: s.kind.as_str().to_owned(),
            object_id: s.object_id.clone(),
            object_hash: Hex::of(s.object_hash),
            approver: s.approver.as_str().to_owned(),
            key_epoch: s.key_epoch,
            signed_at_ms: s.signed_at_ms,
        }
    }

    fn statement(&self) -> ApprovalStatement {
        ApprovalStatement {
            verdict: match self.verdict.as_str() {
                "approve" => Verdict::Approve,
                "reject" => Verdict::Reject,
                other => panic!("verdict {other}"),
            },
            kind: match self.kind.as_str() {
                "grant-request" => ObjectKind::GrantRequest,
                "envelope" => ObjectKind::Envelope,
                other => panic!("kind {other}"),
            },
            object_id: self.object_id.clone(),
            object_hash: self.object_hash.to_vec().try_into().unwrap(),
            approver: Principal::parse(&self.approver).unwrap(),
            key_epoch: self.key_epoch,
            signed_at_ms: self.signed_at_ms,
        }
    }
}

#[test]
#[ignore = "regenerates test-vectors/approval.json"]
fn regenerate_approval_vector() {
    write(APPROVAL, &build());
}

fn build() -> ApprovalVector {
    let keys = MessageKeys::from_secret_bytes(&ann_secret()).unwrap();
    let body = request_body();
    let hash = body.hash();
    let ann = Principal::parse(ANN).unwrap();
    let at = NOW + 5 * 60_000;
    let base = ApprovalStatement {
        verdict: Verdict::Approve,
        kind: ObjectKind::GrantRequest,
        object_id: body.id.to_owned(),
        object_hash: hash,
        approver: ann.clone(),
        key_epoch: 3,
        signed_at_ms: at,
    };
    let cases = [
        ("Ann approves grant request r-7", base.clone()),
        (
            "Ann rejects grant request r-7",
            ApprovalStatement {
                verdict: Verdict::Reject,
                ..base.clone()
            },
        ),
        (
            "Ann approves a held envelope: object_id is its message ID (UUID text), \
             object_hash its hash_i of §4.4 (here 32 bytes 00..1f)",
            ApprovalStatement {
                kind: ObjectKind::Envelope,
                object_id: "0195f0c2-7d4e-7000-8000-000000000000".to_owned(),
                object_hash: std::array::from_fn(|i| i as u8),
                ..base.clone()
            },
        ),
    ];
    let statements: Vec<StatementCase> = cases
        .into_iter()
        .map(|(description, s)| {
            let signed = s.clone().sign(&keys).unwrap();
            StatementCase {
                description: description.to_owned(),
                statement: StatementFields::of(&s),
                signing_input: Hex(s.signing_input()),
                signature: Hex::of(signed.signature()),
            }
        })
        .collect();
    let first = &statements[0];
    let tamper = |description: &str, change: &dyn Fn(&mut ApprovalStatement), error: &str| {
        let mut s = first.statement.statement();
        change(&mut s);
        TamperedCase {
            description: description.to_owned(),
            statement: StatementFields::of(&s),
            signature: first.signature.clone(),
            error: error.to_owned(),
        }
    };
    let tampered = vec![
        tamper(
            "verdict changed to reject",
            &|s| s.verdict = Verdict::Reject,
            "BadSignature",
        ),
        tamper(
            "kind changed to envelope",
            &|s| s.kind = ObjectKind::Envelope,
            "BadSignature",
        ),
        tamper(
            "object_id changed to r-8",
            &|s| s.object_id = "r-8".to_owned(),
            "BadSignature",
        ),
        tamper(
            "first byte of object_hash xor 0x01",
            &|s| s.object_hash[0] ^= 1,
            "BadSignature",
        ),
        tamper("signed_at_ms + 1", &|s| s.signed_at_ms += 1, "BadSignature"),
        tamper(
            "approver changed to Bob (verified with Ann's key, as Ann)",
            &|s| s.approver = Principal::parse(BOB).unwrap(),
            "SignerMismatch { claimed: \"spiffe://acme.internal/human/bob\", signer: \"spiffe://acme.internal/human/ann\" }",
        ),
    ];
    ApprovalVector {
        description: "Approval statements (PROTOCOL.md §11) signed with the approver's Ed25519 \
                      message key: signing_input is the canonical statement, compared byte for \
                      byte; Ed25519 is deterministic, so compare signatures too. The grant \
                      request's canonical_bytes are hashed (SHA-256) into the statements about \
                      it. Verify each statement with ed25519_public as `approver` at \
                      verify_at_ms; each `tampered` statement, with the first statement's \
                      signature, must fail with `error`."
            .to_owned(),
        approver: Approver {
            principal: ANN.to_owned(),
            message_keys_secret: Hex::of(ann_secret()),
            ed25519_public: Hex::of(keys.ed25519_public()),
            key_epoch: 3,
        },
        grant_request: GrantRequestVector {
            id: body.id.to_owned(),
            requester: body.requester.to_owned(),
            name: body.name.to_owned(),
            duration_ms: body.duration_ms,
            reason: body.reason.to_owned(),
            created_at_ms: body.created_at_ms,
            expires_at_ms: body.expires_at_ms,
            canonical_bytes: Hex(body.canonical_bytes()),
            hash: Hex::of(hash),
        },
        statements,
        verify_at_ms: at,
        tampered,
    }
}

#[test]
fn approval_vector_is_current() {
    let stored: ApprovalVector = read(APPROVAL);
    let built = build();
    assert_eq!(
        serde_json::to_value(&stored).unwrap(),
        serde_json::to_value(&built).unwrap(),
        "regenerate with `cargo test -p entente-crypto --test approval -- --ignored`"
    );
}

#[test]
fn approval_vector_grant_request() {
    let v: ApprovalVector = read(APPROVAL);
    let r = &v.grant_request;
    let body = GrantRequestBody {
        id: &r.id,
        requester: &r.requester,
        name: &r.name,
        duration_ms: r.duration_ms,
        reason: &r.reason,
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
    };
    assert_eq!(body.canonical_bytes(), &*r.canonical_bytes);
    assert_eq!(spec::grant_request(&body), &*r.canonical_bytes);
    assert_eq!(body.hash(), &*r.hash);
    assert_eq!(spec::sha256(&r.canonical_bytes), &*r.hash);
}

#[test]
fn approval_vector_statements_sign_and_verify() {
    let v: ApprovalVector = read(APPROVAL);
    let a = &v.approver;
    let keys = MessageKeys::from_secret_bytes(&a.message_keys_secret).unwrap();
    assert_eq!(keys.ed25519_public(), &*a.ed25519_public);
    let seed = Ed25519KeyPair::from_seed_unchecked(&a.message_keys_secret[..32]).unwrap();
    assert_eq!(seed.public_key().as_ref(), &*a.ed25519_public);
    let approver = Principal::parse(&a.principal).unwrap();
    let public: [u8; 32] = a.ed25519_public.to_vec().try_into().unwrap();

    assert_eq!(v.statements.len(), 3);
    assert_eq!(
        v.statements[0].statement.object_hash, v.grant_request.hash,
        "the first statements are about the grant request"
    );
    for c in &v.statements {
        let what = &c.description;
        let statement = c.statement.statement();
        assert_eq!(statement.signing_input(), &*c.signing_input, "{what}");
        assert_eq!(spec::statement(&c.statement), &*c.signing_input, "{what}");
        let signed: SignedApproval = statement.clone().sign(&keys).unwrap();
        assert_eq!(signed.signature(), &*c.signature, "{what}");
        assert_eq!(
            seed.sign(&c.signing_input).as_ref(),
            &*c.signature,
            "{what}"
        );
        UnparsedPublicKey::new(&ED25519, &*a.ed25519_public)
            .verify(&c.signing_input, &c.signature)
            .unwrap();
        let verified = ApprovalIn::new(statement.clone(), &c.signature)
            .unwrap()
            .verify_with_key(&approver, &public, v.verify_at_ms)
            .unwrap();
        assert_eq!(verified.statement(), &statement, "{what}");
        assert_eq!(verified.digest(), &spec::sha256(&c.signing_input), "{what}");
    }
}

#[test]
fn approval_vector_statements_verify_against_a_key_bundle() {
    let v: ApprovalVector = read(APPROVAL);
    let keys = MessageKeys::from_secret_bytes(&v.approver.message_keys_secret).unwrap();
    let ca = TestCa::new();
    let body = KeyBundleBody {
        principal: Principal::parse(&v.approver.principal).unwrap(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: v.approver.key_epoch,
        not_before_ms: NOW - DAY,
        not_after_ms: NOW + DAY,
    };
    let bundle = KeyBundleIn::from_wire(ca.sign_bundle(body))
        .unwrap()
        .verify(&ca.authority, NOW)
        .unwrap();
    for c in &v.statements {
        ApprovalIn::new(c.statement.statement(), &c.signature)
            .unwrap()
            .verify(&bundle, v.verify_at_ms)
            .unwrap();
    }
}

#[test]
fn approval_vector_tampered_statements_fail() {
    let v: ApprovalVector = read(APPROVAL);
    let approver = Principal::parse(&v.approver.principal).unwrap();
    let public: [u8; 32] = v.approver.ed25519_public.to_vec().try_into().unwrap();
    assert!(!v.tampered.is_empty());
    for t in &v.tampered {
        let err = ApprovalIn::new(t.statement.statement(), &t.signature)
            .unwrap()
            .verify_with_key(&approver, &public, v.verify_at_ms)
            .unwrap_err();
        assert_eq!(format!("{err:?}"), t.error, "{}", t.description);
    }
}

// === helpers ===

fn read<T: DeserializeOwned>(path: &str) -> T {
    read_vector(path, "approval")
}

/// The statement and grant-request bytes written again from PROTOCOL.md §2 and §11, sharing
/// no code with the crate.
mod spec {
    use aws_lc_rs::digest::{SHA256, digest};
    use entente_crypto::GrantRequestBody;

    struct Canon(Vec<u8>);

    impl Canon {
        fn new(label: &str) -> Self {
            let mut buf = label.as_bytes().to_vec();
            buf.push(0);
            Self(buf)
        }

        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn str(mut self, v: &str) -> Self {
            self.0
                .extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
            self.0.extend_from_slice(v.as_bytes());
            self
        }

        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
    }

    /// §11: what the approver signs.
    pub(super) fn statement(s: &super::StatementFields) -> Vec<u8> {
        assert_eq!(s.object_hash.len(), 32);
        Canon::new("entente/v1/approval")
            .str(&s.verdict)
            .str(&s.kind)
            .str(&s.object_id)
            .raw(&s.object_hash)
            .str(&s.approver)
            .u64(s.key_epoch)
            .u64(s.signed_at_ms)
            .0
    }

    /// §11: a grant request's canonical bytes.
    pub(super) fn grant_request(r: &GrantRequestBody<'_>) -> Vec<u8> {
        Canon::new("entente/v1/grant-request")
            .str(r.id)
            .str(r.requester)
            .str(r.name)
            .u64(r.duration_ms)
            .str(r.reason)
            .u64(r.created_at_ms)
            .u64(r.expires_at_ms)
            .0
    }

    pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
        digest(&SHA256, bytes).as_ref().try_into().unwrap()
    }
}
