//! Receiving past the signatures: like `envelope_open`, but every sender key and batch that
//! names an agent of the fixture as sender is signed again with that agent's key after the
//! fuzzer changed it. What a changed field does to the HPKE unwrap, the epoch bookkeeping,
//! the expiry and clock-skew checks, the replay window and AES-GCM is reached, instead of
//! stopping at a bad signature.
#![no_main]

use entente_wire::{self as wire, Deliver, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut deliver) = wire::decode::<Deliver>(data, &Limits::default()) {
        let fixture = entente_fuzz::fixture();
        fixture.sign_again(&mut deliver.sender_keys, &mut deliver.batches);
        let _ = fixture.receive(deliver.sender_keys, deliver.batches);
    }
});
