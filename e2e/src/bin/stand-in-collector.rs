//! `stand-in-collector`: a real long-running program that the agent's supervisor
//! cannot tell from the OpenTelemetry Collector, for tests that do not need the real
//! one.
//!
//! - `--config=PATH` (or `--config PATH`): reads the file. A config holding the
//!   text `stand-in-fail-start` (e.g. a processor `transform/stand-in-fail-start`,
//!   which the template policy lets through) makes it print
//!   `Error: invalid configuration: stand-in asked to fail` to stderr and exit 1,
//!   like a collector rejecting its config.
//! - A config holding `stand-in-crash-after-start` starts and answers its health
//!   check like any other, then 1.5 s later prints `Error: stand-in crashed after
//!   start` and exits 2: a collector that crash-loops after an update.
//! - Otherwise it answers HTTP 200 on `127.0.0.1:$PHOENIX_HEALTH_PORT` at any path
//!   (the health_check extension), logs a start line to stdout, and runs until
//!   SIGTERM or SIGINT, then exits 0.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let config_path = config_path(std::env::args().skip(1))?;
    let config = std::fs::read_to_string(&config_path)
        .map_err(|err| format!("cannot read config {config_path}: {err}"))?;
    if config.contains("stand-in-fail-start") {
        return Err("invalid configuration: stand-in asked to fail".into());
    }
    let port: u16 = std::env::var("PHOENIX_HEALTH_PORT")
        .map_err(|_| "PHOENIX_HEALTH_PORT is not set".to_string())?
        .parse()
        .map_err(|err| format!("PHOENIX_HEALTH_PORT is not a port: {err}"))?;

    // Block the stop signals in every thread, so the main thread can wait for them.
    let stop_signals = stop_signal_set();
    // SAFETY: the set is initialized; no old mask is asked for.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &stop_signals, std::ptr::null_mut()) };

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .map_err(|err| format!("cannot listen on 127.0.0.1:{port}: {err}"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            answer_ok(stream);
        }
    });
    println!(
        "stand-in collector {} started: config {config_path}, health on 127.0.0.1:{port}",
        std::process::id()
    );

    if config.contains("stand-in-crash-after-start") {
        std::thread::sleep(Duration::from_millis(1500));
        eprintln!("Error: stand-in crashed after start");
        std::process::exit(2);
    }
    let mut signal = 0;
    // SAFETY: the set is initialized and `signal` is a valid out pointer.
    unsafe { libc::sigwait(&stop_signals, &mut signal) };
    println!("stand-in collector received signal {signal}; exiting");
    Ok(())
}

/// The value of `--config=PATH` or `--config PATH`.
fn config_path(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    while let Some(arg) = args.next() {
        if let Some(path) = arg.strip_prefix("--config=") {
            return Ok(path.to_string());
        }
        if arg == "--config" {
            return args.next().ok_or("--config needs a path".to_string());
        }
    }
    Err("no --config given".into())
}

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the zeroed set before it is used.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Reads (part of) the request and answers 200, whatever was asked.
fn answer_ok(mut stream: TcpStream) {
    // A client that connects and sends nothing must not block the next one for long.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request);
    let body = "{\"status\":\"Server available\"}";
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
