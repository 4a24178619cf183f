//! `phoenix`, the user's command line for Phoenix.
//!
//! - [`commands`]: the clap command tree and one module per noun (`experiment`,
//!   `host`, `task`, ...) that calls the API and prints the answer; `sync`, which
//!   applies a directory every interval; `completion`, which needs no API.
//! - [`client`]: the HTTP client for the user API and its typed error, which renders
//!   `problem+json` answers and connection failures with a hint of what to do next.
//! - [`config`]: API URL and token from flags, environment and config file.
//! - [`output`]: `-o table|json|yaml`, the column-aligning table printer and the
//!   `Key: value` block of `get` commands.
//! - [`selector`]: `-l key=value,key!=value` of list commands.
//! - [`stream`]: the event stream (a WebSocket) that `experiment status --watch`
//!   and the experiment and host lists' `--watch` follow, and how an event reads
//!   as one line.
//! - [`watch`]: `--watch` of the deployment and task lists, which reads the list
//!   again every `--watch-interval` and prints what changed.
//!
//! This file only parses, runs, prints the error and picks the exit code: 0 on
//! success, 1 for any error (usage, configuration, API, connection). `phoenix
//! diff` exits as `kubectl diff` does once its arguments parse: 0 without
//! changes, 1 with, 2 on any error.

mod client;
mod commands;
mod config;
mod document;
mod output;
mod selector;
mod stream;
mod tls;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::client::ClientError;

fn main() -> ExitCode {
    let cli = match commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // `--help` and `--version` arrive here too, and are not failures.
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // 1 means "there are changes" for diff; its errors are 2.
    let error_code = match cli.command {
        commands::Command::Diff { .. } => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", render_error(&err));
            error_code
        }
    }
}

fn render_error(err: &anyhow::Error) -> String {
    match err.downcast_ref::<ClientError>() {
        Some(client_error) => client_error.render(),
        None => output::shown(&format!("error: {err:#}")),
    }
}

/// The reader of our stdout went away (`phoenix experiment list | head -1`): not an
/// error worth reporting.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
