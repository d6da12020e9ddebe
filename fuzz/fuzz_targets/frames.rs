//! Session frames from bytes: `ClientFrame` as the hub decodes it from any connected agent,
//! `ServerFrame` as an agent decodes it from the hub, each with the default limits. What
//! decodes is encoded again and must decode to the same frame, and what it carries goes
//! through the checks made before routing or opening: sender keys and batches into their `*In`
//! forms, subscription patterns parsed.
#![no_main]

use entente_types::ChannelPattern;
use entente_wire::{self as wire, ClientFrame, Limits, ServerFrame, client_frame, server_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(frame) = wire::decode::<ClientFrame>(data, &limits) {
        // What is encoded again decodes to the same frame (the hub forwards what it encodes;
        // `Envelope`'s and `SignedBatch`'s decoding is written out by hand). A re-encoding
        // beyond the limits (an element repeated unpacked that came packed) is not compared.
        if let Ok(again) = wire::decode::<ClientFrame>(&wire::encode(&frame), &limits) {
            assert_eq!(again, frame, "a client frame encoded again decodes to another");
        }
        match frame.kind {
            Some(client_frame::Kind::Publish(publish)) => {
                entente_fuzz::inspect_items(publish.sender_keys, publish.batches);
            }
            Some(client_frame::Kind::Subscribe(subscribe)) => {
                if let Ok(pattern) = ChannelPattern::parse(&subscribe.pattern) {
                    let _ = (pattern.is_literal(), pattern.tokens().count());
                }
            }
            _ => {}
        }
    }
    if let Ok(frame) = wire::decode::<ServerFrame>(data, &limits) {
        if let Ok(again) = wire::decode::<ServerFrame>(&wire::encode(&frame), &limits) {
            assert_eq!(again, frame, "a server frame encoded again decodes to another");
        }
        if let Some(server_frame::Kind::Deliver(deliver)) = frame.kind {
            entente_fuzz::inspect_items(deliver.sender_keys, deliver.batches);
        }
    }
});
