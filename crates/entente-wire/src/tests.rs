#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;

use super::*;
use crate::scan::Schema;

fn envelope(n: u64) -> Envelope {
    Envelope {
        epoch: 7,
        seq: n,
        message_id: IdBytes::new(&[1; 16]),
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_060_000,
        reply_to: "_reply.a.b".into(),
        ciphertext: vec![9; 272],
        channel: Name::default(),
    }
}

fn batch(n: usize) -> SignedBatch {
    SignedBatch {
        sender: "spiffe://acme.internal/agent/ops/alpha".into(),
        channel: "orders.eu".into(),
        key_epoch: 1,
        envelopes: (0..n as u64).map(envelope).collect(),
        signature: vec![3; 64],
    }
}

fn sender_key(n: usize) -> SenderKey {
    SenderKey {
        version: 1,
        sender: "spiffe://acme.internal/agent/ops/alpha".into(),
        channel: "orders.eu".into(),
        epoch: 5,
        issued_at_ms: 1,
        expires_at_ms: 2,
        key_epoch: 1,
        recipients: (0..n)
            .map(|i| WrappedKey {
                recipient: format!("spiffe://acme.internal/agent/ops/r{i}"),
                recipient_key_epoch: 1,
                enc: vec![4; 32],
                ciphertext: vec![5; 48],
            })
            .collect(),
        signature: vec![6; 64],
    }
}

/// `err` is [`WireError::FieldTooLong`] for `field`.
#[track_caller]
fn assert_too_long(err: &WireError, field: &str) {
    assert!(
        matches!(err, WireError::FieldTooLong { field: f, .. } if *f == field),
        "{err}"
    );
}

/// `err` is [`WireError::TooMany`] for `field`.
#[track_caller]
fn assert_too_many(err: &WireError, field: &str) {
    assert!(
        matches!(err, WireError::TooMany { field: f, .. } if *f == field),
        "{err}"
    );
}

fn publish_frame() -> ClientFrame {
    ClientFrame {
        kind: Some(client_frame::Kind::Publish(Publish {
            request_id: 42,
            sender_keys: vec![sender_key(3)],
            batches: vec![batch(4), batch(1)],
            purpose: String::new(),
        })),
    }
}

#[test]
fn round_trips() {
    let limits = Limits::default();
    let frame = publish_frame();
    assert_eq!(
        decode::<ClientFrame>(&encode(&frame), &limits).unwrap(),
        frame
    );
    let b = batch(16);
    assert_eq!(decode::<SignedBatch>(&encode(&b), &limits).unwrap(), b);
    let list = RevocationList {
        version: 3,
        issued_at_ms: 10,
        serials: vec![vec![1, 2, 3]],
        principals: vec!["spiffe://acme.internal/agent/ops/x".into()],
        signer: vec![1; 32],
        signature: vec![2; 70],
    };
    assert_eq!(
        decode::<RevocationList>(&encode(&list), &limits).unwrap(),
        list
    );
    let server = ServerFrame {
        kind: Some(server_frame::Kind::Refusal(Refusal {
            request_id: 1,
            code: 16,
            reason: "rate limited".into(),
            retry_after_ms: 250,
        })),
    };
    assert_eq!(
        decode::<ServerFrame>(&encode(&server), &limits).unwrap(),
        server
    );
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let limits = Limits {
        max_frame_bytes: 100,
        ..Limits::default()
    };
    let err = decode::<SignedBatch>(&encode(&batch(4)), &limits).unwrap_err();
    assert!(matches!(err, WireError::TooLarge { max: 100, .. }), "{err}");
}

#[test]
fn truncated_input_is_malformed() {
    let bytes = encode(&publish_frame());
    for cut in [1, 2, 10, bytes.len() / 2, bytes.len() - 1] {
        let err = decode::<ClientFrame>(&bytes[..cut], &Limits::default()).unwrap_err();
        assert!(
            matches!(err, WireError::Malformed { .. }),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn batch_length_is_bounded() {
    let limits = Limits {
        max_batch_envelopes: 8,
        ..Limits::default()
    };
    assert!(decode::<SignedBatch>(&encode(&batch(8)), &limits).is_ok());
    let err = decode::<SignedBatch>(&encode(&batch(9)), &limits).unwrap_err();
    assert_eq!(
        err,
        WireError::TooMany {
            message: "SignedBatch",
            field: "envelopes",
            max: 8
        }
    );
}

#[test]
fn recipient_count_is_bounded_inside_a_frame() {
    let limits = Limits {
        max_recipients: 2,
        ..Limits::default()
    };
    let err = decode::<ClientFrame>(&encode(&publish_frame()), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooMany {
                field: "recipients",
                max: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn items_per_frame_are_bounded() {
    let limits = Limits {
        max_items_per_frame: 1,
        ..Limits::default()
    };
    let err = decode::<ClientFrame>(&encode(&publish_frame()), &limits).unwrap_err();
    assert_too_many(&err, "batches");
}

#[test]
fn empty_repeated_elements_cannot_amplify() {
    // 2 bytes per empty envelope: a 4 MiB frame would otherwise allocate 2 M structs.
    let mut bytes = Vec::new();
    for _ in 0..10_000 {
        bytes.extend_from_slice(&[0x22, 0x00]);
    }
    let err = decode::<SignedBatch>(&bytes, &Limits::default()).unwrap_err();
    assert_too_many(&err, "envelopes");
}

#[test]
fn string_and_bytes_fields_are_bounded() {
    let mut b = batch(1);
    b.channel = "a".repeat(MAX_CHANNEL_BYTES + 1);
    let err = decode::<SignedBatch>(&encode(&b), &Limits::default()).unwrap_err();
    assert_too_long(&err, "channel");

    let mut b = batch(1);
    b.sender = "s".repeat(MAX_ID_BYTES + 1);
    let err = decode::<SignedBatch>(&encode(&b), &Limits::default()).unwrap_err();
    assert_too_long(&err, "sender");

    let limits = Limits {
        max_ciphertext_bytes: 100,
        ..Limits::default()
    };
    let err = decode::<SignedBatch>(&encode(&batch(1)), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::FieldTooLong {
                field: "ciphertext",
                len: 272,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_singular_field_is_refused() {
    let mut bytes = encode(&Subscribe {
        durable: String::new(),
        subscription_id: 1,
        pattern: "a.b".into(),
    });
    bytes.extend_from_slice(&[0x12, 0x01, b'c']);
    let frame = [&[0x12, bytes.len() as u8][..], &bytes].concat();
    let err = decode::<ClientFrame>(&frame, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooMany {
                field: "pattern",
                max: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_wire_type_and_groups_are_refused() {
    // field 1 (epoch) sent as length-delimited
    let err = decode::<Envelope>(&[0x0a, 0x01, 0x00], &Limits::default()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");
    // unknown field 15 as a start-group
    let err = decode::<Envelope>(&[0x7b], &Limits::default()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");
    // overlong varint
    let err = decode::<Envelope>(
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");
}

#[test]
fn unknown_fields_are_skipped() {
    let mut bytes = encode(&envelope(1));
    bytes.extend_from_slice(&[0xa0, 0x01, 0x05]); // field 20, varint
    bytes.extend_from_slice(&[0xa9, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]); // field 21, fixed64
    bytes.extend_from_slice(&[0xb5, 0x01, 0, 0, 0, 0]); // field 22, fixed32
    assert_eq!(
        decode::<Envelope>(&bytes, &Limits::default()).unwrap(),
        envelope(1)
    );
}

#[test]
fn invalid_utf8_is_malformed() {
    let bytes = [0x12, 0x02, 0xff, 0xfe];
    let err = decode::<Subscribe>(&bytes, &Limits::default());
    assert!(err.is_err());
}

/// Every field of the `.proto` file has the same number in the scan schemas, and every
/// field prost writes for a fully populated message is one the schema knows.
#[test]
fn field_numbers_match_proto() {
    let proto = include_str!("../../../proto/entente/v1/entente.proto");
    let schemas: [&Schema; 38] = [
        &scan::QUARANTINE_REQUEST,
        &scan::QUARANTINED_AGENT,
        &scan::QUARANTINE_RESPONSE,
        &scan::STORED_QUARANTINE,
        &scan::GRANT_INFO,
        &scan::GRANT_REQUEST_INFO,
        &scan::GRANT_REQUEST,
        &scan::GRANT_RESPONSE,
        &scan::LIST_GRANTS_REQUEST,
        &scan::LIST_GRANTS_RESPONSE,
        &scan::REQUEST_GRANT_REQUEST,
        &scan::REQUEST_GRANT_RESPONSE,
        &scan::APPROVAL_STATEMENT,
        &scan::APPROVE_REQUEST,
        &scan::SUBSCRIPTION_ENDED,
        &scan::POLICY_SOURCE,
        &scan::LOAD_POLICIES_REQUEST,
        &scan::LOAD_POLICIES_RESPONSE,
        &scan::POLICY_SUMMARY,
        &scan::SHOW_POLICIES_RESPONSE,
        &scan::CHECK_POLICY_REQUEST,
        &scan::CHECK_POLICY_RESPONSE,
        &scan::CREATE_TOKEN_REQUEST,
        &scan::CREATE_TOKEN_RESPONSE,
        &scan::REVOKE_REQUEST,
        &scan::REVOKE_RESPONSE,
        &scan::ENROLL_REQUEST,
        &scan::ENROLL_RESPONSE,
        &scan::RENEW_REQUEST,
        &scan::RENEW_RESPONSE,
        &scan::DIRECTORY_REQUEST,
        &scan::DIRECTORY_RESPONSE,
        &scan::KEY_BUNDLE,
        &scan::ENVELOPE,
        &scan::SIGNED_BATCH,
        &scan::SENDER_KEY,
        &scan::REVOCATION_LIST,
        &scan::PUBLISH,
    ];
    assert_eq!(
        proto_fields(proto, "ApproveResponse"),
        scan::APPROVE_RESPONSE.field_list()
    );
    // `ShowPoliciesRequest` has no fields; `StoredPolicies` is checked here too.
    assert_eq!(
        proto_fields(proto, "StoredPolicies"),
        scan::STORED_POLICIES.field_list()
    );
    assert!(scan::SHOW_POLICIES_REQUEST.field_list().is_empty());
    assert!(proto.contains("message ShowPoliciesRequest {\n}"));
    for schema in schemas {
        let declared = proto_fields(proto, schema.name());
        assert!(!declared.is_empty(), "{} missing from proto", schema.name());
        assert_eq!(declared, schema.field_list(), "{}", schema.name());
    }
    for (bytes, schema) in [
        (encode(&batch(2)), &scan::SIGNED_BATCH),
        (encode(&sender_key(2)), &scan::SENDER_KEY),
    ] {
        for number in scan::top_level_numbers(&bytes) {
            assert!(schema.field_list().iter().any(|(_, n)| *n == number));
        }
    }
}

fn proto_fields(proto: &str, message: &str) -> Vec<(String, u32)> {
    let start = format!("message {message} {{");
    let Some(body) = proto.split(&start).nth(1) else {
        return Vec::new();
    };
    let body = body.split('}').next().unwrap();
    body.lines()
        .filter_map(|line| {
            let line = line.split("//").next()?.trim();
            let (lhs, number) = line.strip_suffix(';')?.split_once('=')?;
            let name = lhs.split_whitespace().last()?;
            Some((name.to_owned(), number.trim().parse().ok()?))
        })
        .collect()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits::default();
        let _ = decode::<ClientFrame>(&bytes, &limits);
        let _ = decode::<ServerFrame>(&bytes, &limits);
        let _ = decode::<SignedBatch>(&bytes, &limits);
        let _ = decode::<SenderKey>(&bytes, &limits);
        let _ = decode::<KeyBundle>(&bytes, &limits);
    }

    #[test]
    fn mutated_frames_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&publish_frame());
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode::<ClientFrame>(&bytes, &Limits::default());
    }
}

#[test]
fn many_tiny_elements_are_refused_by_decoded_cost() {
    // 256 sender keys of 4096 empty recipients each: 2 MiB on the wire, but ~40x that decoded.
    let empty_recipients: Vec<u8> = [0x42, 0x00].repeat(4096);
    let mut sender_key = Vec::new();
    sender_key.extend_from_slice(&empty_recipients);
    let mut publish = Vec::new();
    for _ in 0..256 {
        publish.push(0x12);
        prost::encoding::encode_varint(sender_key.len() as u64, &mut publish);
        publish.extend_from_slice(&sender_key);
    }
    let mut frame = vec![0x0a];
    prost::encoding::encode_varint(publish.len() as u64, &mut frame);
    frame.extend_from_slice(&publish);
    assert!(frame.len() < Limits::default().max_frame_bytes);
    let err = decode::<ClientFrame>(&frame, &Limits::default()).unwrap_err();
    assert!(matches!(err, WireError::TooExpensive { .. }), "{err}");
}

#[test]
fn a_realistic_full_frame_is_within_the_decoded_cost() {
    // 256-byte payloads (272-byte ciphertexts), as many as fit in a default frame.
    let frame = ClientFrame {
        kind: Some(client_frame::Kind::Publish(Publish {
            request_id: 1,
            sender_keys: vec![sender_key(64)],
            batches: (0..12).map(|_| batch(1024)).collect(),
            purpose: String::new(),
        })),
    };
    let bytes = encode(&frame);
    assert!(
        bytes.len() <= Limits::default().max_frame_bytes,
        "{}",
        bytes.len()
    );
    decode::<ClientFrame>(&bytes, &Limits::default()).unwrap();
}

#[test]
fn two_members_of_a_oneof_are_refused() {
    let subscribe = encode(&Subscribe {
        durable: String::new(),
        subscription_id: 1,
        pattern: "a".into(),
    });
    let credit = encode(&Credit { messages: 5 });
    let mut frame = vec![0x12, subscribe.len() as u8];
    frame.extend_from_slice(&subscribe);
    frame.extend_from_slice(&[0x22, credit.len() as u8]);
    frame.extend_from_slice(&credit);
    let err = decode::<ClientFrame>(&frame, &Limits::default()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");
}

#[test]
fn enrollment_messages_round_trip_and_are_bounded() {
    let limits = Limits::default();
    let request = EnrollRequest {
        token: format!("ent_{}", "ab".repeat(32)),
        csr: vec![0x30; 300],
        ed25519_public: vec![1; 32],
        x25519_public: vec![2; 32],
    };
    assert_eq!(
        decode::<EnrollRequest>(&encode(&request), &limits).unwrap(),
        request
    );
    let response = EnrollResponse {
        certificate_chain: vec![vec![0x30; 600], vec![0x30; 700]],
        key_bundle: None,
        trust_bundle_pem: "-----BEGIN CERTIFICATE-----".into(),
        revocations: None,
    };
    assert_eq!(
        decode::<EnrollResponse>(&encode(&response), &limits).unwrap(),
        response
    );

    let long_csr = EnrollRequest {
        csr: vec![0x30; MAX_CSR_BYTES + 1],
        ..request
    };
    let err = decode::<EnrollRequest>(&encode(&long_csr), &limits).unwrap_err();
    assert_too_long(&err, "csr");
    let long_chain = EnrollResponse {
        certificate_chain: vec![vec![1]; MAX_CHAIN_CERTIFICATES + 1],
        ..response
    };
    let err = decode::<EnrollResponse>(&encode(&long_chain), &limits).unwrap_err();
    assert_too_many(&err, "certificate_chain");
}

#[test]
fn admin_messages_round_trip_and_are_bounded() {
    let limits = Limits::default();
    let request = RevokeRequest {
        principals: vec!["spiffe://acme.internal/agent/ops/x".into()],
        serials: vec![vec![1, 2, 3]],
    };
    assert_eq!(
        decode::<RevokeRequest>(&encode(&request), &limits).unwrap(),
        request
    );
    let long_serial = RevokeRequest {
        principals: vec![],
        serials: vec![vec![1; MAX_SERIAL_BYTES + 1]],
    };
    let err = decode::<RevokeRequest>(&encode(&long_serial), &limits).unwrap_err();
    assert_too_long(&err, "serials");
    let token = CreateTokenRequest {
        agent: "spiffe://acme.internal/agent/ops/x".into(),
        ttl_seconds: 600,
    };
    assert_eq!(
        decode::<CreateTokenRequest>(&encode(&token), &limits).unwrap(),
        token
    );
}

#[test]
fn subscription_ended_travels_in_a_server_frame_and_is_bounded() {
    let limits = Limits::default();
    let frame = ServerFrame {
        kind: Some(server_frame::Kind::SubscriptionEnded(SubscriptionEnded {
            subscription_id: 7,
            code: 3,
            reason: "no policy permits it".into(),
        })),
    };
    assert_eq!(
        decode::<ServerFrame>(&encode(&frame), &limits).unwrap(),
        frame
    );
    let long = ServerFrame {
        kind: Some(server_frame::Kind::SubscriptionEnded(SubscriptionEnded {
            subscription_id: 7,
            code: 3,
            reason: "x".repeat(MAX_REASON_BYTES + 1),
        })),
    };
    let err = decode::<ServerFrame>(&encode(&long), &limits).unwrap_err();
    assert_too_long(&err, "reason");
}

fn source(name: &str, text: &str) -> PolicySource {
    PolicySource {
        name: name.into(),
        text: text.into(),
    }
}

#[test]
fn policy_messages_round_trip() {
    let limits = Limits::default();
    let load = LoadPoliciesRequest {
        sources: vec![source(
            "a.cedar",
            "permit (principal is Agent, action, resource);",
        )],
    };
    assert_eq!(
        decode::<LoadPoliciesRequest>(&encode(&load), &limits).unwrap(),
        load
    );
    let show = ShowPoliciesResponse {
        epoch: 4,
        sources: load.sources.clone(),
        policies: vec![PolicySummary {
            id: "a.cedar#0".into(),
            source: "a.cedar".into(),
            line: 1,
            column: 1,
            forbid: true,
            cross_segment: true,
        }],
    };
    assert_eq!(
        decode::<ShowPoliciesResponse>(&encode(&show), &limits).unwrap(),
        show
    );
    let check = CheckPolicyRequest {
        principal: "spiffe://acme.internal/agent/ops/x".into(),
        action: "publish".into(),
        resource_type: "channel".into(),
        resource: "orders.eu".into(),
    };
    assert_eq!(
        decode::<CheckPolicyRequest>(&encode(&check), &limits).unwrap(),
        check
    );
    let answer = CheckPolicyResponse {
        allowed: false,
        policies: vec!["no-ops".into()],
        reason: "forbidden".into(),
        cross_segment: true,
        epoch: 2,
        explanation: "DENY: …".into(),
    };
    assert_eq!(
        decode::<CheckPolicyResponse>(&encode(&answer), &limits).unwrap(),
        answer
    );
    let stored = StoredPolicies {
        version: 1,
        sources: load.sources,
    };
    assert_eq!(
        decode::<StoredPolicies>(&encode(&stored), &limits).unwrap(),
        stored
    );
    assert_eq!(
        decode::<ShowPoliciesRequest>(&encode(&ShowPoliciesRequest {}), &limits).unwrap(),
        ShowPoliciesRequest {}
    );
}

#[test]
fn policy_messages_are_bounded() {
    let limits = Limits::default();
    let too_many = LoadPoliciesRequest {
        sources: (0..=MAX_POLICY_SOURCES)
            .map(|i| source(&format!("{i}.cedar"), ""))
            .collect(),
    };
    let err = decode::<LoadPoliciesRequest>(&encode(&too_many), &limits).unwrap_err();
    assert_too_many(&err, "sources");
    for (bad, field) in [
        (
            source(&"n".repeat(MAX_POLICY_SOURCE_NAME_BYTES + 1), ""),
            "name",
        ),
        (
            source("a.cedar", &"x".repeat(MAX_POLICY_TEXT_BYTES + 1)),
            "text",
        ),
    ] {
        let request = LoadPoliciesRequest { sources: vec![bad] };
        let err = decode::<LoadPoliciesRequest>(&encode(&request), &limits).unwrap_err();
        assert_too_long(&err, field);
    }
    let long_id = ShowPoliciesResponse {
        epoch: 1,
        sources: vec![],
        policies: vec![PolicySummary {
            id: "i".repeat(MAX_POLICY_ID_BYTES + 1),
            ..PolicySummary::default()
        }],
    };
    let err = decode::<ShowPoliciesResponse>(&encode(&long_id), &limits).unwrap_err();
    assert_too_long(&err, "id");
    let many = CheckPolicyResponse {
        policies: vec!["p".into(); MAX_POLICIES + 1],
        ..CheckPolicyResponse::default()
    };
    let err = decode::<CheckPolicyResponse>(&encode(&many), &limits).unwrap_err();
    assert_too_many(&err, "policies");
    let long_explanation = CheckPolicyResponse {
        explanation: "e".repeat(MAX_EXPLANATION_BYTES + 1),
        ..CheckPolicyResponse::default()
    };
    let err = decode::<CheckPolicyResponse>(&encode(&long_explanation), &limits).unwrap_err();
    assert_too_long(&err, "explanation");
    let long_action = CheckPolicyRequest {
        action: "a".repeat(MAX_ACTION_BYTES + 1),
        ..CheckPolicyRequest::default()
    };
    let err = decode::<CheckPolicyRequest>(&encode(&long_action), &limits).unwrap_err();
    assert_too_long(&err, "action");
    let long_resource = CheckPolicyRequest {
        resource: "r".repeat(MAX_ID_BYTES + 1),
        ..CheckPolicyRequest::default()
    };
    let err = decode::<CheckPolicyRequest>(&encode(&long_resource), &limits).unwrap_err();
    assert_too_long(&err, "resource");
}

fn grant_info() -> GrantInfo {
    GrantInfo {
        id: "g-1".into(),
        name: "demo-read".into(),
        principal: "spiffe://acme.internal/agent/ops/eve".into(),
        not_before_ms: 1_000,
        not_after_ms: 4_000,
        reason: "INC-42".into(),
        granter: String::new(),
        request: "r-1".into(),
        approvers: vec!["spiffe://acme.internal/human/admin".into()],
    }
}

fn request_info() -> GrantRequestInfo {
    GrantRequestInfo {
        id: "r-1".into(),
        requester: "spiffe://acme.internal/agent/ops/eve".into(),
        name: "demo-read".into(),
        duration_ms: 3_000,
        reason: "INC-42: read the orders".into(),
        created_at_ms: 900,
        expires_at_ms: 3_600_900,
        required: 2,
        approvals: vec![ApprovalInfo {
            approver: "spiffe://acme.internal/human/ann".into(),
            verdict: "approve".into(),
            signed_at_ms: 950,
        }],
        state: "pending".into(),
        grant: String::new(),
    }
}

#[test]
fn grant_messages_round_trip() {
    let limits = Limits::default();
    let grant = GrantRequest {
        principal: "spiffe://acme.internal/agent/ops/eve".into(),
        name: "demo-read".into(),
        duration_ms: 60_000,
        not_after_ms: 0,
        reason: "INC-42".into(),
    };
    assert_eq!(
        decode::<GrantRequest>(&encode(&grant), &limits).unwrap(),
        grant
    );
    let given = GrantResponse {
        grant: Some(grant_info()),
    };
    assert_eq!(
        decode::<GrantResponse>(&encode(&given), &limits).unwrap(),
        given
    );
    let list = ListGrantsResponse {
        grants: vec![grant_info()],
        requests: vec![request_info()],
        now_ms: 2_000,
    };
    assert_eq!(
        decode::<ListGrantsResponse>(&encode(&list), &limits).unwrap(),
        list
    );
    let ask = RequestGrantRequest {
        name: "demo-read".into(),
        duration_ms: 3_000,
        reason: "INC-42".into(),
    };
    assert_eq!(
        decode::<RequestGrantRequest>(&encode(&ask), &limits).unwrap(),
        ask
    );
    let asked = RequestGrantResponse {
        request: Some(request_info()),
    };
    assert_eq!(
        decode::<RequestGrantResponse>(&encode(&asked), &limits).unwrap(),
        asked
    );
    let approve = ApproveRequest {
        statement: Some(ApprovalStatement {
            verdict: "approve".into(),
            kind: "grant-request".into(),
            object_id: "r-1".into(),
            object_hash: vec![7; 32],
            approver: "spiffe://acme.internal/human/admin".into(),
            key_epoch: 1,
            signed_at_ms: 1_000,
        }),
        signature: vec![9; 64],
        key_bundle: None,
    };
    assert_eq!(
        decode::<ApproveRequest>(&encode(&approve), &limits).unwrap(),
        approve
    );
    let outcome = ApproveResponse {
        outcome: "granted".into(),
        approvals: 1,
        required: 1,
        grant: Some(grant_info()),
    };
    assert_eq!(
        decode::<ApproveResponse>(&encode(&outcome), &limits).unwrap(),
        outcome
    );
    assert_eq!(
        decode::<ListGrantsRequest>(&encode(&ListGrantsRequest::default()), &limits).unwrap(),
        ListGrantsRequest::default()
    );
}

#[test]
fn grant_messages_are_bounded() {
    let limits = Limits::default();
    let long_name = RequestGrantRequest {
        name: "n".repeat(MAX_OBJECT_ID_BYTES + 1),
        ..RequestGrantRequest::default()
    };
    let err = decode::<RequestGrantRequest>(&encode(&long_name), &limits).unwrap_err();
    assert_too_long(&err, "name");
    let long_reason = GrantRequest {
        reason: "r".repeat(MAX_REASON_BYTES + 1),
        ..GrantRequest::default()
    };
    let err = decode::<GrantRequest>(&encode(&long_reason), &limits).unwrap_err();
    assert_too_long(&err, "reason");
    let long_signature = ApproveRequest {
        signature: vec![0; MAX_SIGNATURE_BYTES + 1],
        ..ApproveRequest::default()
    };
    let err = decode::<ApproveRequest>(&encode(&long_signature), &limits).unwrap_err();
    assert_too_long(&err, "signature");
    let long_hash = ApproveRequest {
        statement: Some(ApprovalStatement {
            object_hash: vec![0; MAX_KEY_BYTES + 1],
            ..ApprovalStatement::default()
        }),
        ..ApproveRequest::default()
    };
    let err = decode::<ApproveRequest>(&encode(&long_hash), &limits).unwrap_err();
    assert_too_long(&err, "object_hash");
    let many_approvals = RequestGrantResponse {
        request: Some(GrantRequestInfo {
            approvals: vec![ApprovalInfo::default(); MAX_APPROVAL_RECORDS + 1],
            ..request_info()
        }),
    };
    let err = decode::<RequestGrantResponse>(&encode(&many_approvals), &limits).unwrap_err();
    assert_too_many(&err, "approvals");
    let many_grants = ListGrantsResponse {
        grants: vec![GrantInfo::default(); MAX_GRANT_RECORDS + 1],
        ..ListGrantsResponse::default()
    };
    let err = decode::<ListGrantsResponse>(&encode(&many_grants), &limits).unwrap_err();
    assert_too_many(&err, "grants");
}

#[test]
fn audit_messages_are_bounded() {
    let limits = Limits::default();
    let ok = AuditRecordsResponse {
        records: vec![vec![1; 100]; MAX_AUDIT_RECORDS],
        from: 7,
        total: 2000,
        checkpoint: "origin\n1\nAA==\n\n— k AAAA\n".into(),
        verifier_key: "k+00000000+AQ==".into(),
    };
    assert_eq!(
        decode::<AuditRecordsResponse>(&encode(&ok), &limits).unwrap(),
        ok
    );
    let many = AuditRecordsResponse {
        records: vec![vec![1]; MAX_AUDIT_RECORDS + 1],
        ..AuditRecordsResponse::default()
    };
    let err = decode::<AuditRecordsResponse>(&encode(&many), &limits).unwrap_err();
    assert_too_many(&err, "records");
    let long_record = AuditRecordsResponse {
        records: vec![vec![1; MAX_AUDIT_RECORD_BYTES + 1]],
        ..AuditRecordsResponse::default()
    };
    let limits_big = Limits {
        max_frame_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = decode::<AuditRecordsResponse>(&encode(&long_record), &limits_big).unwrap_err();
    assert_too_long(&err, "records");
    let long_note = AuditExportResponse {
        checkpoint: "n".repeat(MAX_AUDIT_NOTE_BYTES + 1),
        ..AuditExportResponse::default()
    };
    let err = decode::<AuditExportResponse>(&encode(&long_note), &limits).unwrap_err();
    assert_too_long(&err, "checkpoint");
    let long_path = AuditProofResponse {
        log_path: vec![vec![0; 32]; MAX_PROOF_HASHES + 1],
        ..AuditProofResponse::default()
    };
    let err = decode::<AuditProofResponse>(&encode(&long_path), &limits).unwrap_err();
    assert_too_many(&err, "log_path");
    let long_hash = AuditProofResponse {
        consistency: vec![vec![0; MAX_KEY_BYTES + 1]],
        ..AuditProofResponse::default()
    };
    let err = decode::<AuditProofResponse>(&encode(&long_hash), &limits).unwrap_err();
    assert_too_long(&err, "consistency");
}

/// `Envelope`'s written-out `prost::Message`: the derive's encoding, bytes fields decoded
/// whole, protobuf's rules for repeated and unknown fields, and prost's errors.
#[test]
fn an_envelope_encodes_as_the_derive_did_and_decodes_by_protobuf_rules() {
    use prost::encoding::{WireType, encode_key, encode_varint};

    let full = Envelope {
        channel: "_reply.a.b.c".into(),
        ..envelope(3)
    };
    // Fields in number order, each as prost encodes it.
    let mut expected = Vec::new();
    prost::encoding::uint64::encode(1, &7, &mut expected);
    prost::encoding::uint64::encode(2, &3, &mut expected);
    prost::encoding::bytes::encode(3, &vec![1u8; 16], &mut expected);
    prost::encoding::uint64::encode(4, &1_700_000_000_000, &mut expected);
    prost::encoding::uint64::encode(5, &1_700_000_060_000, &mut expected);
    prost::encoding::string::encode(6, &"_reply.a.b".to_owned(), &mut expected);
    prost::encoding::bytes::encode(7, &vec![9u8; 272], &mut expected);
    prost::encoding::string::encode(8, &"_reply.a.b.c".to_owned(), &mut expected);
    assert_eq!(full.encode_to_vec(), expected);
    assert_eq!(full.encoded_len(), expected.len());
    assert_eq!(Envelope::decode(&expected[..]).unwrap(), full);
    // From a buffer in two pieces, split anywhere (inside a length prefix, inside a field).
    for at in 0..=expected.len() {
        let (a, b) = expected.split_at(at);
        let pieces = prost::bytes::Buf::chain(a, b);
        assert_eq!(Envelope::decode(pieces).unwrap(), full, "split at {at}");
    }
    // Defaults are left out.
    assert!(Envelope::default().encode_to_vec().is_empty());
    assert_eq!(Envelope::default().encoded_len(), 0);

    // A field seen twice: the last one wins; an unknown field is skipped.
    let mut twice = expected.clone();
    prost::encoding::bytes::encode(7, &vec![5u8; 40], &mut twice);
    prost::encoding::bytes::encode(3, &vec![2u8; 16], &mut twice);
    prost::encoding::string::encode(6, &"_reply.x.y".to_owned(), &mut twice);
    prost::encoding::string::encode(8, &"_reply.x.y.z".to_owned(), &mut twice);
    prost::encoding::uint64::encode(99, &1, &mut twice);
    let decoded = Envelope::decode(&twice[..]).unwrap();
    assert_eq!(decoded.ciphertext, vec![5u8; 40]);
    assert_eq!(decoded.message_id.as_slice(), [2u8; 16]);
    assert_eq!(&*decoded.reply_to, "_reply.x.y");
    assert_eq!(&*decoded.channel, "_reply.x.y.z");

    // The names: text that is not UTF-8, a wrong wire type, a length past the end; each
    // refused with the field named, whole in one buffer or split anywhere.
    for tag in [6, 8] {
        let field = if tag == 6 { "reply_to" } else { "channel" };
        let mut not_utf8 = Vec::new();
        prost::encoding::bytes::encode(tag, &vec![b'a', 0xff, b'b'], &mut not_utf8);
        let mut varint = Vec::new();
        prost::encoding::uint64::encode(tag, &5, &mut varint);
        let mut short = Vec::new();
        encode_key(tag, WireType::LengthDelimited, &mut short);
        encode_varint(10, &mut short);
        short.extend_from_slice(b"_reply");
        for bad in [not_utf8, varint, short] {
            for at in 0..=bad.len() {
                let (a, b) = bad.split_at(at);
                let error = Envelope::decode(prost::bytes::Buf::chain(a, b))
                    .unwrap_err()
                    .to_string();
                assert!(error.contains(&format!("Envelope.{field}")), "{error}");
            }
        }
    }

    // A bytes field longer than what is left, and one of the wrong wire type.
    let mut short = Vec::new();
    encode_key(7, WireType::LengthDelimited, &mut short);
    encode_varint(100, &mut short);
    short.extend_from_slice(&[0; 99]);
    let error = Envelope::decode(&short[..]).unwrap_err().to_string();
    assert!(error.contains("Envelope.ciphertext"), "{error}");
    let mut varint = Vec::new();
    prost::encoding::uint64::encode(3, &5, &mut varint);
    let error = Envelope::decode(&varint[..]).unwrap_err().to_string();
    assert!(error.contains("Envelope.message_id"), "{error}");
    // A message ID longer than what is left; and one longer than IDs are (decoded without the
    // scan that bounds them), kept whole.
    let mut short = Vec::new();
    encode_key(3, WireType::LengthDelimited, &mut short);
    encode_varint(16, &mut short);
    short.extend_from_slice(&[0; 15]);
    let error = Envelope::decode(&short[..]).unwrap_err().to_string();
    assert!(error.contains("Envelope.message_id"), "{error}");
    for len in [1, 15, 16, 17, MAX_KEY_BYTES, MAX_KEY_BYTES + 1, 300] {
        let mut id = Vec::new();
        prost::encoding::bytes::encode(3, &vec![7u8; len], &mut id);
        let decoded = Envelope::decode(&id[..]).unwrap();
        assert_eq!(decoded.message_id.as_slice(), vec![7u8; len], "{len}");
        assert_eq!(decoded.encode_to_vec(), id, "{len}");
    }
}

proptest! {
    #[test]
    fn envelopes_round_trip_with_their_length(
        epoch: u64,
        seq: u64,
        message_id in proptest::collection::vec(any::<u8>(), 0..100),
        issued_at_ms: u64,
        expires_at_ms: u64,
        reply_to in "[a-z._]{0,20}",
        ciphertext in proptest::collection::vec(any::<u8>(), 0..600),
        channel in "[a-z._]{0,20}",
    ) {
        let message_id = IdBytes::new(&message_id);
        let (reply_to, channel) = (Name::from(reply_to), Name::from(channel));
        let envelope = Envelope {
            epoch, seq, message_id, issued_at_ms, expires_at_ms, reply_to, ciphertext, channel,
        };
        let bytes = envelope.encode_to_vec();
        prop_assert_eq!(bytes.len(), envelope.encoded_len());
        prop_assert_eq!(Envelope::decode(&bytes[..]).unwrap(), envelope);
    }
}

/// `SignedBatch` as the prost derive writes it: the reference its written-out
/// `prost::Message` is checked against.
#[derive(Clone, PartialEq, prost::Message)]
struct DerivedBatch {
    #[prost(string, tag = "1")]
    sender: String,
    #[prost(string, tag = "2")]
    channel: String,
    #[prost(uint64, tag = "3")]
    key_epoch: u64,
    #[prost(message, repeated, tag = "4")]
    envelopes: Vec<Envelope>,
    #[prost(bytes = "vec", tag = "5")]
    signature: Vec<u8>,
}

impl From<&SignedBatch> for DerivedBatch {
    fn from(b: &SignedBatch) -> Self {
        Self {
            sender: b.sender.clone(),
            channel: b.channel.clone(),
            key_epoch: b.key_epoch,
            envelopes: b.envelopes.clone(),
            signature: b.signature.clone(),
        }
    }
}

/// One field of an envelope as bytes: a key (mostly the known fields' one-byte keys, but also
/// unknown fields, other wire types, keys written in two bytes and field 0) and a value that
/// may or may not fit it (varints of any length, length-delimited bytes that may not be
/// UTF-8, a length past the end).
fn envelope_field() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        8 => prop::sample::select(vec![0x08u8, 0x10, 0x1a, 0x20, 0x28, 0x32, 0x3a, 0x42])
            .prop_map(|k| vec![k]),
        1 => any::<u8>().prop_map(|k| vec![k]),
        1 => Just(vec![0x88, 0x00]),
        1 => Just(vec![0x7a]),
    ];
    let value = prop_oneof![
        any::<u64>().prop_map(|v| {
            let mut out = Vec::new();
            prost::encoding::encode_varint(v, &mut out);
            out
        }),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|v| {
            let mut out = Vec::new();
            prost::encoding::encode_varint(v.len() as u64, &mut out);
            out.extend(v);
            out
        }),
        "[a-z._]{0,12}".prop_map(|v| {
            let mut out = vec![v.len() as u8];
            out.extend(v.bytes());
            out
        }),
        Just(vec![0xff; 11]),
        Just(vec![0x40]),
    ];
    (key, value).prop_map(|(mut key, value)| {
        key.extend(value);
        key
    })
}

proptest! {
    #[test]
    fn a_batch_is_encoded_as_the_derive_encodes_it(
        n in 0usize..4,
        epoch: u64,
        sender in "[a-z:/.]{0,12}",
        channel in "[a-z.]{0,12}",
        signature in prop::collection::vec(any::<u8>(), 0..3),
        named: bool,
    ) {
        let mut b = batch(n);
        b.key_epoch = epoch;
        b.sender = sender;
        b.channel = channel;
        b.signature = signature;
        if named {
            for e in &mut b.envelopes {
                e.channel = "_reply.a.b.c".into();
            }
        }
        let derived = DerivedBatch::from(&b);
        let bytes = b.encode_to_vec();
        prop_assert_eq!(&bytes, &derived.encode_to_vec());
        prop_assert_eq!(b.encoded_len(), derived.encoded_len());
        prop_assert_eq!(SignedBatch::decode(&bytes[..]).unwrap(), b);
    }

    /// Envelopes read in one pass decode to what prost's field-by-field decoding makes of the
    /// same bytes, and whatever one refuses the other refuses.
    #[test]
    fn envelopes_read_in_one_pass_decode_as_prost_decodes_them(
        fields in prop::collection::vec(prop::collection::vec(envelope_field(), 0..10), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate: bool,
    ) {
        let mut bytes = Vec::new();
        prost::encoding::string::encode(1, &"spiffe://a.b/agent/c/d".to_owned(), &mut bytes);
        for envelope in &fields {
            let body = envelope.concat();
            prost::encoding::encode_key(4, prost::encoding::WireType::LengthDelimited, &mut bytes);
            prost::encoding::encode_varint(body.len() as u64, &mut bytes);
            bytes.extend(body);
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let ours = SignedBatch::decode(&bytes[..]);
        let derived = DerivedBatch::decode(&bytes[..]);
        match (ours, derived) {
            (Ok(ours), Ok(derived)) => prop_assert_eq!(DerivedBatch::from(&ours), derived),
            (Err(ours), Err(derived)) => {
                prop_assert_eq!(ours.to_string(), derived.to_string().replace("DerivedBatch", "SignedBatch"));
            }
            (ours, derived) => prop_assert!(false, "ours {:?}, prost's {:?}", ours, derived),
        }
        for envelope in &fields {
            let body = envelope.concat();
            if let Some(plain) = Envelope::read_plain(&body) {
                prop_assert_eq!(Some(plain), Envelope::decode(&body[..]).ok());
            }
        }
    }
}

#[test]
fn a_batch_decodes_from_a_buffer_in_two_pieces() {
    let mut b = batch(3);
    b.envelopes[1].channel = "_reply.a.b.c".into();
    let bytes = b.encode_to_vec();
    // Split anywhere: inside an envelope, its length prefix, or between envelopes; an envelope
    // not whole in the first piece goes through prost's decoding.
    for at in 0..=bytes.len() {
        let (first, second) = bytes.split_at(at);
        let pieces = prost::bytes::Buf::chain(first, second);
        assert_eq!(SignedBatch::decode(pieces).unwrap(), b, "split at {at}");
    }
}

#[test]
fn envelopes_as_entente_encodes_them_are_read_in_one_pass() {
    for e in [envelope(0), envelope(u64::MAX), Envelope::default()] {
        let mut e = e;
        e.channel = "_reply.a.b.c".into();
        let bytes = e.encode_to_vec();
        assert_eq!(Envelope::read_plain(&bytes), Some(e));
    }
    // Anything else is left to prost: an unknown field, a key in two bytes.
    let mut unknown = envelope(1).encode_to_vec();
    unknown.extend([0x78, 0x01]);
    assert_eq!(Envelope::read_plain(&unknown), None);
    assert_eq!(Envelope::decode(&unknown[..]).unwrap(), envelope(1));
    let long_key = [0x88, 0x00, 0x05];
    assert_eq!(Envelope::read_plain(&long_key), None);
    assert_eq!(Envelope::decode(&long_key[..]).unwrap().epoch, 5);
}
#[test]
fn the_decoded_element_cost_covers_each_elements_value() {
    use std::mem::size_of;
    // Every nested or repeated message's value, as prost builds it, within what is charged;
    // a held message is the one exception, and its docs say so.
    let sizes = [
        ("KeyBundle", size_of::<KeyBundle>()),
        ("Envelope", size_of::<Envelope>()),
        ("SignedBatch", size_of::<SignedBatch>()),
        ("SenderKey", size_of::<SenderKey>()),
        ("WrappedKey", size_of::<WrappedKey>()),
        ("Deliver", size_of::<Deliver>()),
        ("GrantInfo", size_of::<GrantInfo>()),
        ("GrantRequestInfo", size_of::<GrantRequestInfo>()),
        ("RevocationList", size_of::<RevocationList>()),
        ("Vec<u8>", size_of::<Vec<u8>>()),
        ("String", size_of::<String>()),
    ];
    for (name, size) in sizes {
        assert!(size <= DECODED_ELEMENT_COST, "{name}: {size} bytes");
    }
    assert!(size_of::<HeldMessage>() <= 2 * DECODED_ELEMENT_COST);
}

/// A join token never shows in a `Debug` output of the messages carrying it (a log line
/// formatting a request must not hold a credential); whether one is set does.
#[test]
fn join_tokens_stay_out_of_debug_output() {
    let token = "entente-join-0123456789abcdef";
    let request = EnrollRequest {
        token: token.to_owned(),
        csr: vec![1, 2],
        ed25519_public: vec![3],
        x25519_public: vec![4],
    };
    let response = CreateTokenResponse {
        token: token.to_owned(),
        expires_at_ms: 42,
    };
    for shown in [format!("{request:?}"), format!("{response:#?}")] {
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    assert!(format!("{request:?}").contains("csr: [1, 2]"));
    assert!(format!("{response:?}").contains("expires_at_ms: 42"));
    assert!(format!("{:?}", EnrollRequest::default()).contains("token: \"\""));
}
