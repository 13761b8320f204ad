use clap::Parser;
use tokenvault::cli::{Cli, Command};

fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| tokenvault::app::figment().extract_inner::<String>("log").ok())
        .unwrap_or_else(|| "info".into());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        command => match tokenvault::cli::run(command) {
            Ok(out) => {
                if !out.is_empty() {
                    println!("{out}");
                }
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn serve() -> std::process::ExitCode {
    let rocket = match tokenvault::app::build(tokenvault::app::figment()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokenvault cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rocket::execute(rocket.launch()) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: tokenvault stopped: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
