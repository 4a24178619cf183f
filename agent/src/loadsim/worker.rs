//! The load worker: `phoenix-agent load-worker ...`, the process a load run is made
//! of. It starts no async runtime and opens nothing: it holds some memory, idles or
//! burns a share of a core, and exits when its lifetime ends, when its parent (the
//! agent thread that spawned it) dies, or on SIGTERM.
//!
//! Every worker has a unique command line (`--tag`), which is what makes
//! high-cardinality runs expensive for a process scraper.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use phoenix_wire::duration::HumanDuration;
use rustix::process::{self, Signal};

/// The subcommand that turns `phoenix-agent` into a load worker.
pub const SUBCOMMAND: &str = "load-worker";

/// A CPU-burning worker works and sleeps in periods this long, so its share of a
/// core is smooth at any sampling interval longer than this.
const BURN_PERIOD: Duration = Duration::from_millis(100);

/// One load worker (spawned by the agent; not meant to be run by hand).
#[derive(Debug, Parser, PartialEq)]
#[command(name = "phoenix-agent load-worker")]
pub struct WorkerArgs {
    /// The load run this worker belongs to, e.g. run.demo
    #[arg(long)]
    pub run: String,
    /// What makes this worker's command line unique, e.g. run.demo-17
    #[arg(long)]
    pub tag: String,
    /// The agent's pid: the worker exits when it is no longer its parent
    #[arg(long)]
    pub parent: u32,
    /// How long to live, e.g. 1s or 10m
    #[arg(long, value_parser = HumanDuration::parse)]
    pub lifetime: HumanDuration,
    /// CPU to burn, in thousandths of a core
    #[arg(long, default_value_t = 0)]
    pub cpu_millicores: u32,
    /// Memory to hold, in MiB
    #[arg(long, default_value_t = 0)]
    pub memory_mib: u32,
}

impl WorkerArgs {
    /// The arguments after the program name, as the agent passes them.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            SUBCOMMAND.to_string(),
            "--run".into(),
            self.run.clone(),
            "--tag".into(),
            self.tag.clone(),
            "--parent".into(),
            self.parent.to_string(),
            "--lifetime".into(),
            self.lifetime.to_string(),
        ];
        if self.cpu_millicores > 0 {
            args.extend(["--cpu-millicores".into(), self.cpu_millicores.to_string()]);
        }
        if self.memory_mib > 0 {
            args.extend(["--memory-mib".into(), self.memory_mib.to_string()]);
        }
        args
    }
}

/// When the process was started as `phoenix-agent load-worker ...`, runs the worker
/// and returns its exit code; otherwise `None` (the agent proper runs).
pub fn run_if_invoked(mut args: impl Iterator<Item = OsString>) -> Option<ExitCode> {
    let program = args.next()?;
    let first = args.next()?;
    if first != SUBCOMMAND {
        return None;
    }
    let parsed = WorkerArgs::try_parse_from(std::iter::once(program).chain(args));
    Some(match parsed {
        Ok(worker) => run(&worker),
        Err(err) => {
            let _ = err.print();
            ExitCode::FAILURE
        }
    })
}

/// Runs the worker until its lifetime ends.
pub fn run(worker: &WorkerArgs) -> ExitCode {
    if !die_with_parent(worker.parent) {
        return ExitCode::SUCCESS; // the agent is already gone
    }
    let deadline = Instant::now() + worker.lifetime.as_duration();
    let memory = hold_memory(worker.memory_mib);
    if worker.cpu_millicores == 0 {
        sleep_until(deadline);
    } else {
        burn_until(deadline, worker.cpu_millicores);
    }
    std::hint::black_box(&memory);
    ExitCode::SUCCESS
}

/// Asks the kernel to SIGKILL this process when the thread that spawned it exits
/// (the agent's run thread, or the whole agent), then checks that the parent is
/// still the agent (it may have died before the request). False when it is not.
fn die_with_parent(parent: u32) -> bool {
    if let Err(err) = process::set_parent_process_death_signal(Some(Signal::KILL)) {
        // Not fatal: the run thread still ends its workers; only an agent killed
        // with SIGKILL would leave this one to its lifetime.
        eprintln!("load worker: cannot ask to die with the agent: {err}");
    }
    process::getppid().is_some_and(|p| u32::try_from(p.as_raw_pid()) == Ok(parent))
}

/// Allocates `mib` MiB and touches every page, so it is resident.
fn hold_memory(mib: u32) -> Vec<u8> {
    const PAGE: usize = 4096;
    let mut block = vec![0u8; mib as usize * 1024 * 1024];
    for i in (0..block.len()).step_by(PAGE) {
        block[i] = 1;
    }
    block
}

fn sleep_until(deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left);
    }
}

/// Spins `millicores / 1000` of every [`BURN_PERIOD`] and sleeps the rest.
fn burn_until(deadline: Instant, millicores: u32) {
    let busy = BURN_PERIOD * millicores.min(1000) / 1000;
    let mut counter = 0u64;
    while Instant::now() < deadline {
        let period_start = Instant::now();
        while period_start.elapsed() < busy {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
        let rest = BURN_PERIOD.saturating_sub(period_start.elapsed());
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(rest.min(left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> WorkerArgs {
        WorkerArgs {
            run: "run.demo".into(),
            tag: "run.demo-7".into(),
            parent: 42,
            lifetime: HumanDuration::from_secs(90),
            cpu_millicores: 50,
            memory_mib: 0,
        }
    }

    #[test]
    fn arguments_round_trip() {
        let worker = worker();
        let args = worker.to_args();
        assert_eq!(
            args,
            [
                "load-worker",
                "--run",
                "run.demo",
                "--tag",
                "run.demo-7",
                "--parent",
                "42",
                "--lifetime",
                "1m30s",
                "--cpu-millicores",
                "50"
            ]
        );
        // The subcommand selects the worker; the flags after it are its own.
        let flags = args.into_iter().skip(1);
        let parsed =
            WorkerArgs::try_parse_from(std::iter::once("phoenix-agent".to_string()).chain(flags))
                .unwrap();
        assert_eq!(parsed, worker);
    }

    #[test]
    fn only_the_subcommand_runs_a_worker() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>().into_iter();
        assert!(run_if_invoked(argv(&["phoenix-agent", "--api-url", "x"])).is_none());
        assert!(run_if_invoked(argv(&["phoenix-agent"])).is_none());
    }

    #[test]
    fn memory_is_held() {
        let block = hold_memory(2);
        assert_eq!(block.len(), 2 * 1024 * 1024);
        assert_eq!(block[4096], 1);
    }
}
