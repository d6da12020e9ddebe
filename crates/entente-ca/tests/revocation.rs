//! Revocation lists: signing, the wire round trip, and what verification refuses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{Fixture, new_ca, now, unix_ms};
use entente_ca::{INTERMEDIATE_KEY, RevocationError, Revocations, VerifiedRevocationList};
use entente_crypto::revocation::signing_input;
use entente_keystore::KeyName;
use entente_wire as wire;
use proptest::prelude::*;

fn sample(f: &Fixture) -> Revocations {
    let mut r = Revocations::new();
    r.revoke_serial(&[0x12, 0x34]).unwrap();
    r.revoke_serial(&[0x01; 16]).unwrap();
    r.revoke_principal(&f.agent("team", "mallory"));
    r.revoke_principal(&f.human("eve"));
    r
}

/// Signs `list` as is (sorted or not) with the CA's intermediate key.
fn sign_raw(f: &Fixture, list: &mut wire::RevocationList) {
    list.signer = f.ca.signer_id().to_vec();
    let input = signing_input(
        list.version,
        list.issued_at_ms,
        &list.serials,
        &list.principals,
        &list.signer,
    );
    list.signature = f
        .keystore
        .sign(&KeyName::new(INTERMEDIATE_KEY).unwrap(), &input)
        .unwrap();
}

#[test]
fn versions_bump_on_every_change_only() {
    let f = new_ca("example.org");
    let mut r = Revocations::new();
    assert_eq!(r.version(), 0);
    assert!(r.revoke_serial(&[1]).unwrap());
    assert!(!r.revoke_serial(&[1]).unwrap());
    assert!(r.revoke_principal(&f.agent("a", "b")));
    assert!(!r.revoke_principal(&f.agent("a", "b")));
    assert_eq!(r.version(), 2);
    assert_eq!(
        r.revoke_serial(&[]).unwrap_err(),
        RevocationError::BadSerial { len: 0 }
    );
    assert_eq!(
        r.revoke_serial(&[1; 22]).unwrap_err(),
        RevocationError::BadSerial { len: 22 }
    );
    assert_eq!(r.version(), 2);

    let restored = Revocations::from_parts(
        r.version(),
        r.serials().map(<[u8]>::to_vec),
        vec![f.agent("a", "b")],
    )
    .unwrap();
    assert_eq!(restored, r);
}

#[test]
fn signed_list_round_trips_through_the_wire() {
    let f = new_ca("example.org");
    let r = sample(&f);
    let list = f.ca.sign_revocations(&r, now()).unwrap();
    assert_eq!(list.version, 4);
    assert_eq!(list.issued_at_ms, unix_ms(now()));
    assert_eq!(list.serials, vec![vec![0x01; 16], vec![0x12, 0x34]]);

    let bytes = wire::encode(&list);
    let verified = VerifiedRevocationList::decode(
        &bytes,
        &wire::Limits::default(),
        f.ca.trust_bundle(),
        now(),
    )
    .unwrap();
    assert_eq!(verified.version(), 4);
    assert_eq!(verified.issued_at_ms(), unix_ms(now()));
    assert_eq!(verified.to_wire(), &list);
    assert_eq!(verified.encode(), bytes);

    assert!(verified.is_serial_revoked(&[0x12, 0x34]));
    assert!(!verified.is_serial_revoked(&[0x12]));
    assert!(verified.is_principal_revoked(&f.agent("team", "mallory")));
    assert!(verified.is_principal_revoked(&f.human("eve")));
    assert!(!verified.is_principal_revoked(&f.agent("team", "alice")));
    assert!(verified.is_revoked(&[0x99], &f.human("eve")));
    assert!(verified.is_revoked(&[0x12, 0x34], &f.human("bob")));
    assert!(!verified.is_revoked(&[0x99], &f.human("bob")));
}

#[test]
fn tampered_lists_are_refused() {
    let f = new_ca("example.org");
    let list = f.ca.sign_revocations(&sample(&f), now()).unwrap();
    let trust = f.ca.trust_bundle();
    let check = |list: wire::RevocationList| VerifiedRevocationList::verify(list, trust, now());

    let mut t = list.clone();
    t.version += 1;
    assert_eq!(check(t).unwrap_err(), RevocationError::BadSignature);

    let mut t = list.clone();
    t.issued_at_ms -= 1;
    assert_eq!(check(t).unwrap_err(), RevocationError::BadSignature);

    // Dropping an entry (an unrevocation) breaks the signature.
    let mut t = list.clone();
    t.principals.pop();
    assert_eq!(check(t).unwrap_err(), RevocationError::BadSignature);

    let mut t = list.clone();
    t.serials[1][1] ^= 1;
    assert_eq!(check(t).unwrap_err(), RevocationError::BadSignature);

    let mut t = list.clone();
    let last = t.signature.len() - 1;
    t.signature[last] ^= 1;
    assert_eq!(check(t).unwrap_err(), RevocationError::BadSignature);

    let mut t = list.clone();
    t.signer[0] ^= 1;
    assert_eq!(check(t).unwrap_err(), RevocationError::UnknownSigner);

    let mut t = list;
    t.signer.truncate(5);
    assert_eq!(check(t).unwrap_err(), RevocationError::UnknownSigner);
}

#[test]
fn unsorted_or_duplicated_entries_are_refused_even_when_signed() {
    let f = new_ca("example.org");
    let trust = f.ca.trust_bundle();
    let signed = f.ca.sign_revocations(&sample(&f), now()).unwrap();

    let mut unsorted = signed.clone();
    unsorted.serials.reverse();
    sign_raw(&f, &mut unsorted);
    assert_eq!(
        VerifiedRevocationList::verify(unsorted, trust, now()).unwrap_err(),
        RevocationError::Unsorted
    );

    let mut unsorted = signed.clone();
    unsorted.principals.reverse();
    sign_raw(&f, &mut unsorted);
    assert_eq!(
        VerifiedRevocationList::verify(unsorted, trust, now()).unwrap_err(),
        RevocationError::Unsorted
    );

    let mut duplicated = signed.clone();
    let first = duplicated.serials[0].clone();
    duplicated.serials.insert(0, first);
    sign_raw(&f, &mut duplicated);
    assert_eq!(
        VerifiedRevocationList::verify(duplicated, trust, now()).unwrap_err(),
        RevocationError::Unsorted
    );

    let mut bad_principal = signed;
    bad_principal.principals = vec!["spiffe://example.org/not/a/principal/x".to_owned()];
    sign_raw(&f, &mut bad_principal);
    assert!(matches!(
        VerifiedRevocationList::verify(bad_principal, trust, now()).unwrap_err(),
        RevocationError::BadPrincipal(_)
    ));
}

#[test]
fn list_from_another_ca_is_from_an_unknown_signer() {
    let ours = new_ca("example.org");
    let theirs = new_ca("example.org");
    let list = theirs.ca.sign_revocations(&sample(&theirs), now()).unwrap();
    assert_eq!(
        VerifiedRevocationList::verify(list, ours.ca.trust_bundle(), now()).unwrap_err(),
        RevocationError::UnknownSigner
    );
}

#[test]
fn garbage_bytes_are_a_wire_error() {
    let f = new_ca("example.org");
    let err = VerifiedRevocationList::decode(
        &[0xff, 0xff, 0xff],
        &wire::Limits::default(),
        f.ca.trust_bundle(),
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, RevocationError::Wire(_)), "{err:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Whatever is revoked, in whatever order, the signed list verifies and revokes exactly
    /// those entries.
    #[test]
    fn any_revocation_set_round_trips(
        serials in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..=21), 0..8),
        names in proptest::collection::vec("[a-z]{1,8}", 0..8),
    ) {
        let f = new_ca("example.org");
        let mut r = Revocations::new();
        for s in &serials {
            r.revoke_serial(s).unwrap();
        }
        for n in &names {
            r.revoke_principal(&f.agent("seg", n));
        }
        let list = f.ca.sign_revocations(&r, now()).unwrap();
        let bytes = wire::encode(&list);
        let verified = VerifiedRevocationList::decode(
            &bytes, &wire::Limits::default(), f.ca.trust_bundle(), now()).unwrap();
        prop_assert_eq!(verified.version(), r.version());
        for s in &serials {
            prop_assert!(verified.is_serial_revoked(s));
        }
        for n in &names {
            prop_assert!(verified.is_principal_revoked(&f.agent("seg", n)));
        }
        prop_assert!(!verified.is_principal_revoked(&f.agent("other", "x")));
    }
}
