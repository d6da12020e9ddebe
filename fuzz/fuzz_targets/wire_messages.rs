//! Every message type `entente_wire` decodes with bounds (the unary requests and answers,
//! stored records, key bundles, revocation lists, …): the first byte picks the type
//! (`entente_fuzz::WIRE_MESSAGES`), the rest is decoded with the default limits, and what
//! decodes is encoded again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, bytes)) = data.split_first() {
        entente_fuzz::decode_message(selector, bytes);
    }
});
