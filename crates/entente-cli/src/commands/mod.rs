pub(crate) mod agent;
pub(crate) mod attack;
pub(crate) mod audit;
pub(crate) mod bench;
pub(crate) mod bench_rpc;
pub(crate) mod bench_suite;
pub(crate) mod demo;
pub(crate) mod floor;
pub(crate) mod grants;
pub(crate) mod hub;
pub(crate) mod keys;
pub(crate) mod nats;
pub(crate) mod policy;
pub(crate) mod quarantine;
pub(crate) mod rpc;
pub(crate) mod scale;
pub(crate) mod scratch;
pub(crate) mod usage;

/// `value` with its control characters escaped (`\n`, `\u{1b}`): text a peer chose, printed
/// in a line of its own, can't start another line or drive the terminal.
pub(crate) fn clean(value: &str) -> String {
    if value.chars().any(char::is_control) {
        value
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        value.to_owned()
    }
}
