//! Receiving: a `Deliver` from bytes, then every sender key it carries verified and unwrapped
//! (HPKE) and every batch verified (Ed25519) and opened (AES-256-GCM, expiry, replay window)
//! by the recipient of the fixture, with the key bundle of the sender each one names. The
//! seeds are valid, so the fuzzer starts from sealed batches that open.
#![no_main]

use entente_wire::{self as wire, Deliver, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(deliver) = wire::decode::<Deliver>(data, &Limits::default()) {
        let _ = entente_fuzz::fixture().receive(deliver.sender_keys, deliver.batches);
    }
});
