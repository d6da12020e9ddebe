//! `entente`: the command-line tool.
#![forbid(unsafe_code)]

mod commands;
mod data;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a narrated scenario that shows Entente's security properties; exits 0 only if
    /// every property held.
    Demo,
    /// Run a hub.
    #[command(subcommand)]
    Hub(HubCommand),
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => commands::demo::run(cli.json),
        Command::Hub(HubCommand::Start {
            data,
            listen,
            trust_domain,
        }) => commands::hub::start(&data, listen, trust_domain.as_deref(), cli.json),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            if cli.json {
                println!("{}", serde_json::json!({ "error": format!("{err:#}") }));
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}
