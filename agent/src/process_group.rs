//! Process groups, through rustix: signalling one (never init's, never "every
//! process"), and the agent's own. Collectors and load workers each run in a group
//! of their own, so a signal to the group reaches whatever they started too.

pub use rustix::process::Signal;
use rustix::process::{self, Pid};

/// Sends `signal` to the process group `group`; false when the group no longer
/// exists (or `group` is 0 or 1, which are never signalled).
pub fn signal(group: u32, signal: Signal) -> bool {
    let Some(pgid) = i32::try_from(group)
        .ok()
        .filter(|&g| g > 1)
        .and_then(Pid::from_raw)
    else {
        return false;
    };
    process::kill_process_group(pgid, signal).is_ok()
}

/// The agent's own process group, which it never signals.
pub fn own() -> u32 {
    u32::try_from(process::getpgrp().as_raw_pid()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_every_process_are_never_signalled() {
        // Signal 0 of kill(2) would only check; these must not even reach the kernel.
        assert!(!signal(0, Signal::TERM));
        assert!(!signal(1, Signal::TERM));
        assert!(!signal(u32::MAX, Signal::TERM));
    }

    #[test]
    fn a_group_is_signalled_until_it_is_gone() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = child.id();
        assert_ne!(group, own());
        assert!(signal(group, Signal::KILL));
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(!signal(group, Signal::KILL), "the group is gone");
    }
}
