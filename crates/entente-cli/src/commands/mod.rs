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

/// `value` with its control and invisible formatting characters escaped (`\n`, `\u{1b}`,
/// `\u{202e}`): text a peer chose, printed in a line of its own, can't start another line,
/// drive the terminal or reorder what is shown.
pub(crate) fn clean(value: &str) -> String {
    use entente_types::text::is_deceptive;
    if value.chars().any(is_deceptive) {
        value
            .chars()
            .map(|c| {
                if is_deceptive(c) {
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
