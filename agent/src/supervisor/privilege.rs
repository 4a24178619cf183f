//! Least privilege for collectors: each one runs as an unprivileged user, with an
//! empty group list, no way to gain privileges (`no_new_privs`), and only the two
//! capabilities the host_metrics process scraper needs, as ambient capabilities:
//!
//! - `CAP_SYS_PTRACE`: reading `/proc/<pid>/exe` (the executable path) and passing
//!   the ptrace access check of `/proc/<pid>/io` for other users' processes;
//! - `CAP_DAC_READ_SEARCH`: opening `/proc/<pid>/io`, which is mode 0400.
//!
//! Measured on the reference machine (3 scrapes, ~100 processes, all root's):
//! without capabilities the scraper still lists every process, but the executable
//! path of 3 resources out of 291 (its own) and the disk I/O of 3; with
//! `CAP_SYS_PTRACE` alone the paths come back but not the disk I/O; with both, the
//! same as root (102 paths, 279 disk I/O series, the rest kernel threads, which have
//! neither). See docs/SECURITY.md.

use std::io;

use rustix::process::{Gid, Uid};
use rustix::thread::{self, CapabilitySet, CapabilitySets};

/// The user and group a collector runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectorUser {
    pub uid: u32,
    pub gid: u32,
}

impl std::str::FromStr for CollectorUser {
    type Err = String;

    /// `UID:GID` or `UID` (the group is then the same number).
    fn from_str(text: &str) -> Result<Self, String> {
        let (uid, gid) = text.split_once(':').unwrap_or((text, text));
        let number = |part: &str, what: &str| {
            part.trim().parse::<u32>().map_err(|_| {
                format!("`{text}` is not UID:GID (numbers), e.g. 65532:65532; bad {what}")
            })
        };
        let user = CollectorUser {
            uid: number(uid, "uid")?,
            gid: number(gid, "gid")?,
        };
        if user.uid == 0 || user.gid == 0 {
            return Err("collectors may not run as root (uid or gid 0)".into());
        }
        Ok(user)
    }
}

/// The capabilities a collector keeps.
pub const COLLECTOR_CAPABILITIES: [CapabilitySet; 2] =
    [CapabilitySet::SYS_PTRACE, CapabilitySet::DAC_READ_SEARCH];

fn capability_set() -> CapabilitySet {
    COLLECTOR_CAPABILITIES
        .into_iter()
        .fold(CapabilitySet::empty(), |all, one| all | one)
}

/// Becomes `user` keeping only [`COLLECTOR_CAPABILITIES`], across the coming exec.
/// Runs in the forked child before exec: only system calls, no allocation.
pub fn become_collector_user(user: CollectorUser) -> io::Result<()> {
    let uid = Uid::from_raw(user.uid);
    let gid = Gid::from_raw(user.gid);
    // Keep the permitted set through the uid change, then narrow it.
    thread::set_keep_capabilities(true)?;
    thread::set_thread_groups(&[])?;
    thread::set_thread_res_gid(gid, gid, gid)?;
    thread::set_thread_res_uid(uid, uid, uid)?;
    let caps = capability_set();
    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: caps,
            permitted: caps,
            inheritable: caps,
        },
    )?;
    // Ambient capabilities survive the exec of a program without file capabilities.
    for capability in COLLECTOR_CAPABILITIES {
        thread::configure_capability_in_ambient_set(capability, true)?;
    }
    thread::set_keep_capabilities(false)?;
    thread::set_no_new_privs(true)?;
    Ok(())
}

/// Whether this agent can hand collectors to another user (it runs as root).
pub fn can_switch_user() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse() {
        assert_eq!(
            "65532:65533".parse::<CollectorUser>().unwrap(),
            CollectorUser {
                uid: 65532,
                gid: 65533
            }
        );
        assert_eq!("1000".parse::<CollectorUser>().unwrap().gid, 1000);
        assert!("0:0".parse::<CollectorUser>().is_err());
        assert!("nobody".parse::<CollectorUser>().is_err());
    }
}
