//! Key bundles from bytes, as an agent receives them from the hub's directory: decoded with
//! the default limits, their fields checked, then verified against the fixture's trust
//! bundle (trust domain, CA signature, signer and bundle validity), and against the bare
//! intermediate key that vouches for any trust domain.
#![no_main]

use entente_crypto::KeyBundleIn;
use entente_fuzz::NOW_MS;
use entente_wire::{self as wire, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixture = entente_fuzz::fixture();
    let Ok(bundle) = KeyBundleIn::decode(data, &Limits::default()) else {
        return;
    };
    let _ = bundle.body().signing_input(&fixture.intermediate.signer);
    if let Ok(verified) = bundle.clone().verify(&fixture.trust, NOW_MS) {
        let _ = (verified.principal(), verified.is_valid_at(NOW_MS));
        let _ = wire::encode(verified.to_wire());
    }
    let _ = bundle.verify(&fixture.any_domain, NOW_MS);
});
