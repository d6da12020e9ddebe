//! `entente`: the command-line tool.
#![forbid(unsafe_code)]

mod commands;

use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => commands::demo::run(cli.json),
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
