//! Revocation lists from bytes, as a hub or an agent receives them: decoded with the default
//! limits, then checked (sorted entries, serial lengths, principals) and verified against the
//! fixture's trust bundle.
#![no_main]

use entente_ca::VerifiedRevocationList;
use entente_wire::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixture = entente_fuzz::fixture();
    let now = entente_fuzz::now();
    if let Ok(list) = VerifiedRevocationList::decode(data, &Limits::default(), &fixture.trust, now)
    {
        let _ = list.is_revoked(&[1], &fixture.alice.principal);
        let _ = (list.version(), list.issued_at_ms(), list.encode());
    }
});
