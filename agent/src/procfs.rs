//! Reading `/proc`: a process's state, process group, CPU time, start time, resident
//! memory and environment, and the list of running pids.
//!
//! Start times (field 22 of `/proc/<pid>/stat`, in clock ticks since boot) tell a
//! process apart from a later one that reused its pid.

use std::io;
use std::path::PathBuf;

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// The parent's pid.
    pub parent: u32,
    /// The process group id.
    pub process_group: i32,
    /// User CPU time, in clock ticks.
    pub user_ticks: u64,
    /// System CPU time, in clock ticks.
    pub system_ticks: u64,
    /// When the process started, in clock ticks since boot.
    pub start_time: u64,
}

impl ProcessStat {
    /// True unless the process has exited and only waits to be reaped.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// User plus system CPU time, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        (self.user_ticks + self.system_ticks) as f64 / clock_ticks_per_second() as f64
    }
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// Reads `/proc/<pid>/stat`.
pub fn read_stat(pid: u32) -> io::Result<ProcessStat> {
    let text = std::fs::read_to_string(proc_path(pid, "stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat format"),
        )
    })
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcessStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // fields[0] is field 3 (state); field N is fields[N - 3].
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcessStat {
        state: field(3)?.chars().next()?,
        parent: field(4)?.parse().ok()?,
        process_group: field(5)?.parse().ok()?,
        user_ticks: field(14)?.parse().ok()?,
        system_ticks: field(15)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// True when `pid` is a running (not zombie) process that started at `start_time`,
/// i.e. the very process that was recorded, not a later one with the same pid.
pub fn is_same_process_running(pid: u32, start_time: u64) -> bool {
    read_stat(pid).is_ok_and(|stat| stat.is_running() && stat.start_time == start_time)
}

/// Resident memory of `pid` in bytes: `/proc/<pid>/statm` field 2 times the page size.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(proc_path(pid, "statm"))?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected /proc/{pid}/statm format"),
            )
        })?;
    Ok(pages * page_size())
}

/// True when the environment `pid` was started with holds exactly `entry`
/// (`NAME=value`). Processes we may not read count as not holding it.
pub fn environ_contains(pid: u32, entry: &str) -> bool {
    match std::fs::read(proc_path(pid, "environ")) {
        Ok(environ) => environ.split(|&b| b == 0).any(|e| e == entry.as_bytes()),
        Err(_) => false,
    }
}

/// Every pid in `/proc`.
pub fn all_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of CPU and start times.
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let text = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 987654 12345678 300 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.parent, 1);
        assert_eq!(stat.process_group, 4242);
        assert_eq!(stat.user_ticks, 250);
        assert_eq!(stat.system_ticks, 50);
        assert_eq!(stat.start_time, 987654);
        assert!(stat.is_running());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let stat = read_stat(pid).unwrap();
        assert!(stat.is_running());
        assert_eq!(stat.parent, std::os::unix::process::parent_id());
        assert!(is_same_process_running(pid, stat.start_time));
        assert!(!is_same_process_running(pid, stat.start_time + 1));
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(all_pids().unwrap().contains(&pid));
    }
}
