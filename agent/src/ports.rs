//! Loopback ports the agent assigns to each collector: one for its health check and
//! one for its own telemetry, so that collectors side by side never collide.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};

use serde::{Deserialize, Serialize};

/// The two ports a collector is started with (`PHOENIX_HEALTH_PORT`,
/// `PHOENIX_TELEMETRY_PORT`). They are kept for the collector's lifetime, across
/// restarts of its process and of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectorPorts {
    pub health: u16,
    pub telemetry: u16,
}

/// Picks two free loopback ports, distinct from each other and from `in_use` (ports
/// already given to other collectors, which may be between restarts right now).
pub fn assign_ports(in_use: &BTreeSet<u16>) -> io::Result<CollectorPorts> {
    let mut taken = in_use.clone();
    let health = free_port(&taken)?;
    taken.insert(health);
    let telemetry = free_port(&taken)?;
    Ok(CollectorPorts { health, telemetry })
}

/// Asks the kernel for a free port by binding `127.0.0.1:0`. The port is free when
/// this returns; another program could still take it before the collector binds it,
/// in which case the collector fails and is restarted.
fn free_port(avoid: &BTreeSet<u16>) -> io::Result<u16> {
    for _ in 0..32 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if !avoid.contains(&port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "no free loopback port found",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_ports_are_distinct_and_avoid_those_in_use() {
        let first = assign_ports(&BTreeSet::new()).unwrap();
        assert_ne!(first.health, first.telemetry);
        let in_use: BTreeSet<u16> = [first.health, first.telemetry].into();
        let second = assign_ports(&in_use).unwrap();
        assert!(!in_use.contains(&second.health));
        assert!(!in_use.contains(&second.telemetry));
    }
}
