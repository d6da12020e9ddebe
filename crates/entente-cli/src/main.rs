//! `entente`: the command-line tool.
#![forbid(unsafe_code)]

mod commands;
mod data;
mod keystores;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

/// mimalloc rather than the system allocator: the hub, the SDK's tasks and TLS allocate on one
/// thread and free on another for every batch, which glibc's malloc serves slowly (about a
/// fifth of the CPU of `entente bench`; docs/BENCHMARKS.md, "The allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Entente: a zero-trust communication hub for AI agents.
#[derive(Debug, Parser)]
#[command(name = "entente", version, about)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Who acts, and at which hub: the options of every command that connects as an identity.
#[derive(Debug, Args)]
struct At {
    /// The identity directory (an administrator's, for administrative commands).
    #[arg(long)]
    identity: PathBuf,
    /// The hub's address.
    #[arg(long)]
    hub: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a narrated scenario that shows Entente's security properties; exits 0 only if
    /// every property held.
    Demo,
    /// Measure pub→sub of sealed messages through an in-process hub over loopback mutual TLS:
    /// msgs/s, MB/s, publish-to-delivery latency; exits non-zero if any message was lost.
    Bench {
        /// How many messages each publisher publishes (default 200000), or requests with
        /// `--request-reply`; with `--suite`, replaces every workload's own count.
        #[arg(long)]
        messages: Option<u64>,
        /// Payload size in bytes (at least 16).
        #[arg(long, default_value_t = 256)]
        payload: usize,
        /// Each publisher publishes at this many messages per second (default 0: as fast as
        /// possible), on an open loop: each millisecond's messages are released together.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Publishers, each on its own connection; `--messages` is per publisher.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
        publishers: u16,
        /// Subscribers, each on its own connection and receiving every message (fan-out).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
        subscribers: u16,
        /// Request/reply instead of pub/sub: one requester keeps INFLIGHT requests
        /// outstanding to one responder, `--messages` requests in all; with `--compare-nats`,
        /// through nats-server too.
        #[arg(
            long,
            value_name = "INFLIGHT",
            value_parser = clap::value_parser!(u16).range(1..=1024),
            conflicts_with_all = ["compare_authorization", "compare_audit", "compare_attack", "compare_jetstream", "publishers", "subscribers", "rate"]
        )]
        request_reply: Option<u16>,
        /// Run ROUNDS rounds with the hub's policy decisions on and off (a setting of the
        /// hub's `danger` module, for this measurement only) and report the ratio.
        #[arg(long, value_name = "ROUNDS", num_args = 0..=1, default_missing_value = "3")]
        compare_authorization: Option<usize>,
        /// Run ROUNDS rounds with the hub's audit log on and off, and report the ratio.
        #[arg(
            long,
            value_name = "ROUNDS",
            num_args = 0..=1,
            default_missing_value = "3",
            conflicts_with = "compare_authorization"
        )]
        compare_audit: Option<usize>,
        /// Run ROUNDS rounds of durable publishes (`--messages`, nobody subscribed) through
        /// Entente and through nats-server with JetStream file storage (`nats-server` must be
        /// installed), and report the ratio.
        #[arg(
            long,
            value_name = "ROUNDS",
            num_args = 0..=1,
            default_missing_value = "3",
            conflicts_with_all = ["compare_authorization", "compare_audit"]
        )]
        compare_jetstream: Option<usize>,
        /// Run ROUNDS rounds of the pub/sub workload alone and with attackers against the hub
        /// (floods over their rate limit, a replay storm, probes of another segment, stalled
        /// and garbage connections), every agent limited to 5 000 messages/s, the publisher
        /// offered `--rate` (default 4 000/s); report the honest throughput of each and the
        /// ratio.
        #[arg(
            long,
            value_name = "ROUNDS",
            num_args = 0..=1,
            default_missing_value = "3",
            conflicts_with_all = ["compare_authorization", "compare_audit", "compare_jetstream"]
        )]
        compare_attack: Option<usize>,
        /// Run ROUNDS rounds of the same pub/sub (or request/reply) workload through Entente
        /// and through nats-server, plain and with TLS (`nats-server` must be installed), and
        /// report the ratios; with `--rate`, every side's publishers are paced alike.
        #[arg(
            long,
            value_name = "ROUNDS",
            num_args = 0..=1,
            default_missing_value = "3",
            conflicts_with_all = ["compare_authorization", "compare_audit", "compare_jetstream", "compare_attack"]
        )]
        compare_nats: Option<usize>,
        /// Run every workload of the comparison with nats-server, ROUNDS rounds, and print
        /// a throughput table and a latency table: pub/sub 1→1, 1→10 and 10→10;
        /// request/reply with 1 and 64 in flight; durable publish against JetStream; 1 KiB
        /// and 16 KiB payloads; 1→1 again with each side offered half of what it carried (the
        /// latency target). Each with throughput, latency (p50, p99, p99.9), CPU seconds per
        /// million (the kernel's part too) and peak memory (`nats-server` must be installed).
        #[arg(
            long,
            value_name = "ROUNDS",
            num_args = 0..=1,
            default_missing_value = "3",
            conflicts_with_all = ["compare_authorization", "compare_audit", "compare_attack", "compare_jetstream", "compare_nats", "request_reply", "publishers", "subscribers", "rate", "payload"]
        )]
        suite: Option<usize>,
        /// Measure the crypto floor alone: what the cryptography the design requires costs per
        /// message on this machine (for `--payload`-byte messages in full batches), and the
        /// throughput ceiling it sets. `--suite` prints it too.
        #[arg(
            long,
            conflicts_with_all = ["suite", "compare_authorization", "compare_audit", "compare_attack", "compare_jetstream", "compare_nats", "request_reply"]
        )]
        crypto_floor: bool,
        /// The SDK clients run their sessions over HTTP/2 (a gRPC stream on the connection
        /// that also carries their calls) instead of framed (PROTOCOL.md §9.1, the default).
        #[arg(long, conflicts_with = "crypto_floor")]
        http2: bool,
        /// The measured SDK clients' `round_trip_batch_min`, their least round-trip limit: a
        /// signed batch may always hold this many requests, or replies (default: the SDK's,
        /// 32; a client allows more requests when it has more in flight, and more replies
        /// when it was delivered more requests in one batch, never above its `batch_max`,
        /// 256). The crypto floor's request/reply ceiling shares signatures as the clients
        /// would.
        #[arg(
            long,
            value_name = "MESSAGES",
            value_parser = clap::value_parser!(u16).range(1..=256)
        )]
        round_trip_batch_min: Option<u16>,
    },
    /// Open many idle mutual-TLS sessions on a hub run in its own process and report its
    /// memory per connection; then measure handshakes/s with and without session resumption.
    BenchScale {
        /// Idle connections open at once, each with its own session.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Agents to enroll; the connections use their identities in turn.
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Handshakes to time in each mode (full, resumed).
        #[arg(long, default_value_t = 2_000)]
        handshakes: u64,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// The clients run their sessions over HTTP/2 instead of framed (PROTOCOL.md §9.1,
        /// the default).
        #[arg(long)]
        http2: bool,
    },
    /// Run a hub.
    #[command(subcommand)]
    Hub(HubCommand),
    /// The hub's audit log: read, export and prove records (administrators); verify an export
    /// offline.
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// The hub's data keys, audit checkpoint keys and intermediate CAs: show them, rotate one
    /// now (administrators).
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// The agents quarantined for their risk score or by an administrator: list them, lift a
    /// quarantine, impose one (administrators).
    #[command(subcommand)]
    Quarantine(commands::quarantine::QuarantineCommand),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The running hub's Cedar policies: load, show, check a decision (administrators).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Enroll with a join token: create keys, get a certificate, write an identity directory.
    Enroll {
        /// The hub's address.
        #[arg(long)]
        hub: String,
        /// The trust bundle (the hub's `ca.pem`), obtained from the operator.
        #[arg(long)]
        ca: PathBuf,
        /// A file holding the one-time join token, `-` for standard input; without it, the
        /// environment variable `ENTENTE_JOIN_TOKEN`. Never on the command line, where other
        /// users of the machine can read it.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Where to write the identity directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal, sign and publish one message.
    Send {
        #[command(flatten)]
        at: At,
        /// The channel.
        channel: String,
        /// The message; `-` or none: read from standard input.
        message: Option<String>,
        /// Why, for approvers: send the message alone, and say whether the hub holds it for
        /// approval (a high-stakes channel).
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Print verified messages from a channel pattern.
    Listen {
        #[command(flatten)]
        at: At,
        /// The channel or pattern (`*`, `>` wildcards).
        channel: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Read a durable channel as the durable consumer NAME: what was published while it
        /// was away comes first; each message is acknowledged once printed.
        #[arg(long, value_name = "NAME")]
        durable: Option<String>,
    },
    /// Send a request to one agent or human and print its reply.
    Request {
        #[command(flatten)]
        at: At,
        /// Whom to ask: SEGMENT/NAME, or a full agent or human ID.
        target: String,
        /// The request; `-` or none: read from standard input.
        message: Option<String>,
        /// How long to wait for the reply (90s, 15m; default 10s; at most 1d).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Answer requests with a command's output: CMD runs under `sh -c` with the request on
    /// standard input, and its standard output is the reply.
    Serve {
        #[command(flatten)]
        at: At,
        /// `direct` for requests addressed to this identity, or a channel or pattern.
        channel: String,
        /// The command answering each request.
        #[arg(long)]
        exec: String,
        /// Exit after handling this many requests (answered, or failed to answer); the exit
        /// status is 1 if the command failed for one, or one could not be answered.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Revoke an agent: its live connections end at once and its certificate is refused.
    Revoke {
        #[command(flatten)]
        at: At,
        /// The agent's SPIFFE ID.
        agent: String,
    },
    /// Give a principal a time-bound grant, as the hub's policies permit the identity to.
    Grant {
        #[command(flatten)]
        at: At,
        /// Who receives it: SEGMENT/NAME (an agent), human/NAME, or a SPIFFE ID.
        principal: String,
        /// The grant's name, as a policy defines it (`@grant("NAME")`).
        name: String,
        /// How long it lasts: 30s, 15m, 1h30m, 7d (at most the grant's @max_duration).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why; kept with the grant.
        #[arg(long)]
        reason: String,
    },
    /// List the active grants and the just-in-time requests the identity may see.
    Grants {
        #[command(flatten)]
        at: At,
        /// Only this principal's: SEGMENT/NAME, human/NAME, or a SPIFFE ID.
        #[arg(long)]
        principal: Option<String>,
    },
    /// Ask for a grant for the identity itself, just in time; other principals approve it.
    RequestGrant {
        #[command(flatten)]
        at: At,
        /// The grant's name, as a policy defines it.
        name: String,
        /// How long it should last once approved: 30s, 15m, 1h30m.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why; the approvers read it.
        #[arg(long)]
        reason: String,
    },
    /// End a grant now, before its time: the subscriptions it opened end at once.
    RevokeGrant {
        #[command(flatten)]
        at: At,
        /// The grant's ID, `g-<n>` (see `entente grants`).
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// List the pending requests and held messages the identity may approve or reject.
    Approvals {
        #[command(flatten)]
        at: At,
    },
    /// Approve a just-in-time request or a held message: sign a statement over it with the
    /// identity's key.
    Approve {
        #[command(flatten)]
        at: At,
        /// The request's ID, `r-<n>`, or the held message's ID (a UUID).
        id: String,
    },
    /// Reject a just-in-time request or a held message (its requester or sender may reject
    /// it to withdraw it).
    Reject {
        #[command(flatten)]
        at: At,
        /// The request's ID, `r-<n>`, or the held message's ID (a UUID).
        id: String,
    },
    /// List the messages held for approval the identity may see: its own, and those it may
    /// decide, with what became of them.
    Held {
        #[command(flatten)]
        at: At,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a one-time join token for an agent or a human; prints the token alone.
    Create {
        #[command(flatten)]
        at: At,
        /// The agent, as SEGMENT/NAME.
        #[arg(long, required_unless_present = "human", conflicts_with = "human")]
        agent: Option<String>,
        /// Or a human, by name: the token enrolls `spiffe://TD/human/NAME`.
        #[arg(long)]
        human: Option<String>,
        /// How long the token is valid (90s, 15m, 2h, 7d; default: the hub's).
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Replace the running policy set with FILEs (each file's name is its source name) and
    /// the base policies; prints the new policy epoch. All or nothing: on invalid policies
    /// prints every problem, exits non-zero, and the running set is unchanged.
    Load {
        #[command(flatten)]
        at: At,
        /// Cedar policy files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the running policy set: its sources, each policy's ID and place, the epoch.
    Show {
        #[command(flatten)]
        at: At,
    },
    /// Explain how the hub decides a request; exits 0 if allowed, 2 if denied.
    Check {
        #[command(flatten)]
        at: At,
        /// Who: a SPIFFE ID, SEGMENT/NAME for an agent, or human/NAME.
        #[arg(long)]
        principal: String,
        /// What: publish, subscribe, direct, request, reply, enroll, grant, approve, revoke,
        /// admin.
        #[arg(long)]
        action: String,
        /// On what: a channel (a pattern for subscribe), `channel:NAME`, `agent:ID` (or
        /// `agent:SEGMENT/NAME`), `human:NAME`, `segment:NAME`, or `hub:hub` (the hub itself).
        #[arg(long)]
        resource: String,
    },
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Start a hub on a data directory; the first start initializes it (CA, admin identity,
    /// trust bundle, registry, config) and says what it created.
    Start {
        /// The data directory.
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on (default 127.0.0.1:7443, or the config file's).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Trust domain of a new data directory (default entente.local).
        #[arg(long)]
        trust_domain: Option<String>,
        /// Run DATA/policies/*.cedar (and store them) instead of the policy set the hub
        /// stored: the way out when the stored set no longer loads.
        #[arg(long)]
        reload_policies: bool,
        /// How the hub's log events go to standard error: `text`, or `json` (one object per
        /// line; the default with `--json`). They carry no payload, key, token or secret.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
        /// The least severe log events shown: `off`, `error`, `warn`, `info` or `debug`
        /// (refused handshakes and connections are `debug`: counted in the metrics, and only
        /// logged on request, so that a flood of them is no flood of log lines).
        #[arg(long, default_value = "info", value_parser = ["off", "error", "warn", "info", "debug"])]
        log_level: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => commands::demo::run(cli.json),
        Command::Bench {
            messages,
            payload,
            rate,
            publishers,
            subscribers,
            request_reply,
            compare_authorization,
            compare_audit,
            compare_jetstream,
            compare_attack,
            compare_nats,
            suite,
            crypto_floor,
            http2,
            round_trip_batch_min,
        } => {
            use commands::bench::{PubSub, Switch};
            if http2 {
                commands::bench::use_http2_sessions();
            }
            if let Some(limit) = round_trip_batch_min {
                commands::bench::use_round_trip_batch_min(usize::from(limit));
            }
            let count = messages.unwrap_or(200_000);
            let shape = PubSub {
                messages: count,
                payload,
                publishers: usize::from(publishers),
                subscribers: usize::from(subscribers),
            };
            if crypto_floor {
                commands::bench_suite::floor_only(payload, cli.json)
            } else if let Some(rounds) = suite {
                commands::bench_suite::run(rounds, messages, cli.json)
            } else if let Some(inflight) = request_reply {
                let shape = commands::bench_rpc::Rpc {
                    requests: count,
                    payload,
                    inflight: usize::from(inflight),
                };
                commands::bench_rpc::run(shape, compare_nats, cli.json)
            } else if let Some(rounds) = compare_jetstream {
                commands::bench::compare_jetstream(rounds, count, payload, cli.json)
            } else if let Some(rounds) = compare_nats {
                commands::bench::compare_nats(rounds, shape, rate, cli.json)
            } else {
                let compare = compare_authorization
                    .map(|rounds| (Switch::Authorization, rounds))
                    .or(compare_audit.map(|rounds| (Switch::Audit, rounds)))
                    .or(compare_attack.map(|rounds| (Switch::Attack, rounds)));
                let rate = match compare_attack {
                    Some(_) if rate == 0 => commands::attack::HONEST_RATE,
                    _ => rate,
                };
                commands::bench::run(
                    count,
                    payload,
                    rate,
                    (shape.publishers, shape.subscribers),
                    compare,
                    cli.json,
                )
            }
        }
        Command::BenchScale {
            connections,
            agents,
            handshakes,
            concurrency,
            http2,
        } => commands::scale::run(
            commands::scale::Scale {
                connections,
                agents,
                handshakes,
                concurrency,
                transport: if http2 {
                    entente_client::SessionTransport::Http2
                } else {
                    entente_client::SessionTransport::Framed
                },
            },
            cli.json,
        ),
        Command::Hub(HubCommand::Start {
            data,
            listen,
            trust_domain,
            reload_policies,
            log_format,
            log_level,
        }) => {
            let json_logs = log_format.map_or(cli.json, |f| f == "json");
            commands::hub::init_logs(json_logs, &log_level);
            commands::hub::start(
                &data,
                listen,
                trust_domain.as_deref(),
                reload_policies,
                cli.json,
            )
        }
        Command::Audit(command) => commands::audit::run(command, cli.json),
        Command::Keys(command) => commands::keys::run_command(command, cli.json),
        Command::Quarantine(command) => commands::quarantine::run_command(command, cli.json),
        Command::Policy(PolicyCommand::Load { at, files }) => {
            commands::policy::load(&at, &files, cli.json)
        }
        Command::Policy(PolicyCommand::Show { at }) => commands::policy::show(&at, cli.json),
        Command::Policy(PolicyCommand::Check {
            at,
            principal,
            action,
            resource,
        }) => commands::policy::check(&at, &principal, &action, &resource, cli.json),
        Command::Token(TokenCommand::Create {
            at,
            agent,
            human,
            ttl,
        }) => commands::agent::token_create(
            &at.identity,
            &at.hub,
            agent.as_deref(),
            human.as_deref(),
            ttl.as_deref(),
            cli.json,
        ),
        Command::Enroll {
            hub,
            ca,
            token_file,
            out,
        } => commands::agent::enroll(&hub, &ca, token_file.as_deref(), &out, cli.json),
        Command::Send {
            at,
            channel,
            message,
            purpose,
        } => commands::agent::send(
            &at.identity,
            &at.hub,
            &channel,
            message.as_deref(),
            purpose.as_deref(),
            cli.json,
        ),
        Command::Listen {
            at,
            channel,
            count,
            durable,
        } => commands::agent::listen(
            &at.identity,
            &at.hub,
            &channel,
            count,
            durable.as_deref(),
            cli.json,
        ),
        Command::Request {
            at,
            target,
            message,
            timeout,
        } => commands::rpc::request(
            &at.identity,
            &at.hub,
            &target,
            message.as_deref(),
            timeout.as_deref(),
            cli.json,
        ),
        Command::Serve {
            at,
            channel,
            exec,
            count,
        } => commands::rpc::serve(&at.identity, &at.hub, &channel, &exec, count, cli.json),
        Command::Revoke { at, agent } => {
            commands::agent::revoke(&at.identity, &at.hub, &agent, cli.json)
        }
        Command::Grant {
            at,
            principal,
            name,
            duration,
            reason,
        } => commands::grants::grant(&at, &principal, &name, &duration, &reason, cli.json),
        Command::Grants { at, principal } => {
            commands::grants::grants(&at, principal.as_deref(), cli.json)
        }
        Command::RequestGrant {
            at,
            name,
            duration,
            reason,
        } => commands::grants::request_grant(&at, &name, &duration, &reason, cli.json),
        Command::RevokeGrant { at, id, reason } => {
            commands::grants::revoke_grant(&at, &id, &reason, cli.json)
        }
        Command::Approvals { at } => commands::grants::approvals(&at, cli.json),
        Command::Approve { at, id } => commands::grants::decide(&at, &id, true, cli.json),
        Command::Reject { at, id } => commands::grants::decide(&at, &id, false, cli.json),
        Command::Held { at } => commands::grants::held(&at, cli.json),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // An error may carry text a peer chose (a refusal's reason): escaped as all output.
            if cli.json {
                commands::announce_json(&serde_json::json!({ "error": format!("{err:#}") }));
            } else {
                // A message of several lines (a policy set's problems) keeps them, indented:
                // none can pass for a line of its own.
                let text = format!("{err:#}");
                let lines: Vec<String> = text.lines().map(commands::clean).collect();
                eprintln!("error: {}", lines.join("\n  "));
            }
            ExitCode::FAILURE
        }
    }
}
