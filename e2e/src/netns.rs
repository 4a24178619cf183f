//! Separate hosts on one machine for fault tests: a network namespace joined to
//! this one by a veth pair, so a process in it reaches services here only over
//! that link, and a test can cut the link (a partition: both ends stay alive, the
//! packets just stop) and restore it.
//!
//! Fault tests use their own names (`phxrel-<name>`) and their own subnet,
//! 10.78.0.0/16, one /30 per namespace (host side `.1`, namespace side `.2`), apart
//! from the test kubelet's bridge (`phxbr0`, 10.77.0.0/24). Each namespace is made
//! under an exclusive `flock` on [`FAULT_NETWORK_LOCK`], held while it lives, so
//! two test processes never use the same names. Dropping it removes both.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Held while fault-test namespaces exist.
pub const FAULT_NETWORK_LOCK: &str = "/run/lock/phoenix-fault-network.lock";

/// A network namespace linked to this one by a veth pair.
pub struct NetNs {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// This side's veth: set it down to cut the namespace off.
    pub host_link: String,
    /// This side's address, which services the namespace reaches listen on.
    pub host_ip: Ipv4Addr,
    /// The namespace's address.
    pub ns_ip: Ipv4Addr,
    _lock: std::fs::File,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates `phxrel-<name>` with link number `index` (0..=255: its /30 is
    /// 10.78.<index>.0), waiting for [`FAULT_NETWORK_LOCK`]. A leftover of a killed
    /// run under the same name is removed first.
    pub fn create(name: &str, index: u8) -> Result<NetNs, String> {
        let lock = std::fs::File::create(FAULT_NETWORK_LOCK)
            .map_err(|e| format!("{FAULT_NETWORK_LOCK}: {e}"))?;
        // SAFETY: flock on a file descriptor this function owns; blocks until free.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "flock {FAULT_NETWORK_LOCK}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ns = format!("phxrel-{name}");
        let host_link = format!("vrel{index}");
        let _ = ip(&["link", "del", &host_link]);
        let _ = ip(&["netns", "del", &ns]);
        let host_ip = Ipv4Addr::new(10, 78, index, 1);
        let ns_ip = Ipv4Addr::new(10, 78, index, 2);
        let created = NetNs {
            name: ns.clone(),
            host_link: host_link.clone(),
            host_ip,
            ns_ip,
            _lock: lock,
        };
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(created)
    }

    /// Cuts the link (the namespace's end goes down): packets between the
    /// namespace and this side are dropped; every process and socket stays as it
    /// is, and [`Self::host_ip`] stays reachable from this side.
    pub fn cut(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "link", "set", "eth0", "down"])
    }

    /// Restores the link.
    pub fn restore(&self) -> Result<(), String> {
        ip(&["-n", &self.name, "link", "set", "eth0", "up"])
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
