//! The hub's configuration file, `DIR/config.toml` of `entente hub start`: a TOML document
//! whose values the hub parses further. The file's own parser (`ConfigFile::parse`) lives in
//! the `entente` binary and is not reachable from outside it, so this target drives what it
//! is made of: the TOML document, written back as the hub writes its file and read again,
//! and each value the hub reads through the public parser it goes through — `listen` and
//! `[metrics]` `listen` (addresses), `trust_domain` (and the administrator's ID in it), the
//! channel patterns of `[[durable]]` and `[[limits.channel]]`, and the durations.
#![no_main]

use std::net::SocketAddr;

use entente_types::{ChannelPattern, HumanId, TrustDomain};
use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(table) = toml::from_str::<Table>(text) else {
        return;
    };
    if let Ok(written) = toml::to_string(&table) {
        let _ = toml::from_str::<Table>(&written);
    }
    if let Some(listen) = table.get("listen").and_then(Value::as_str) {
        let _ = listen.parse::<SocketAddr>();
    }
    if let Some(td) = table.get("trust_domain").and_then(Value::as_str)
        && let Ok(td) = TrustDomain::new(td)
    {
        let _ = HumanId::new(&td, "admin");
    }
    let durable = table.get("durable").and_then(Value::as_array);
    for stream in durable.into_iter().flatten().filter_map(Value::as_table) {
        if let Some(channels) = stream.get("channels").and_then(Value::as_str) {
            let _ = ChannelPattern::parse(channels);
        }
        for key in ["max_age", "ack_wait", "sync"] {
            if let Some(duration) = stream.get(key).and_then(Value::as_str) {
                let _ = entente_policy::parse_duration(duration);
            }
        }
    }
    let limits = table.get("limits").and_then(Value::as_table);
    let classes = limits
        .and_then(|l| l.get("channel"))
        .and_then(Value::as_array);
    for class in classes.into_iter().flatten().filter_map(Value::as_table) {
        if let Some(channels) = class.get("channels").and_then(Value::as_str) {
            let _ = ChannelPattern::parse(channels);
        }
    }
    let metrics = table.get("metrics").and_then(Value::as_table);
    if let Some(listen) = metrics
        .and_then(|m| m.get("listen"))
        .and_then(Value::as_str)
    {
        let _ = listen.parse::<SocketAddr>();
    }
    if let Some(rollover) = table.get("ca_rollover").and_then(Value::as_table) {
        for key in ["overlap", "lead"] {
            if let Some(duration) = rollover.get(key).and_then(Value::as_str) {
                let _ = entente_policy::parse_duration(duration);
            }
        }
    }
});
