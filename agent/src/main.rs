//! `phoenix-agent`: parses flags, sets up logging and signals, and runs the agent
//! (see the library's [`phoenix_agent::run`]). Started as `phoenix-agent load-worker
//! ...` it is a load worker instead (see [`phoenix_agent::loadsim::worker`]).

use anyhow::Context;
use clap::Parser;
use phoenix_agent::AgentConfig;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    // `phoenix-agent load-worker ...` is a load process: no runtime, no logging.
    if let Some(code) = phoenix_agent::loadsim::worker::run_if_invoked(std::env::args_os()) {
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
    agent_main()
}

#[tokio::main]
async fn agent_main() -> anyhow::Result<()> {
    let config = AgentConfig::parse();
    config.check_required()?;
    // Logs go to stderr; colours only on a terminal, not in log files.
    let telemetry = phoenix_telemetry::init("phoenix-agent", &config.telemetry, "info")?;

    // Registered before the agent starts, so an early SIGTERM is a clean shutdown too.
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
        }
    };
    let ran = phoenix_agent::run(config, shutdown).await;
    telemetry.shutdown().await;
    ran.context("phoenix-agent stopped with an error")
}
