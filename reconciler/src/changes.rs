//! What changed since the last pass, gathered from the reconciler's notifications,
//! and the [`Scope`] of the next pass it gives.
//!
//! A change that concerns one host (its status report, its reported collectors or
//! load runs, one of its tasks finishing) is announced as `host:<id>` (migration
//! 0015), and the next pass looks at those hosts only. Any other announcement (an
//! experiment, a deployment, a template, a destination, a roll-out step), a
//! (re)connection of the listener (announcements may have been missed), a failed
//! pass and the periodic resync ask for a full pass. So the pass's work follows
//! what changed, not the size of the fleet, and the full pass stays the safety net.

use std::collections::BTreeSet;

use phoenix_storage::hosts::HostFilter;

/// Above this many changed hosts the next pass is a full one. A scoped pass costs
/// what its hosts cost, so a rollout's bursts of reports (thousands of hosts
/// between two passes) stay scoped: each host is read about as often as it
/// reports, not once per pass. (At 2,000, every pass of a 10,000-host rollout was
/// a full one, 1.2 to 2.7 s each.) Past this many the list itself costs about as
/// much as reading every host.
pub const MAX_SCOPED_HOSTS: usize = 20_000;

/// What a pass looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every host.
    Full,
    /// Only these hosts (sorted, without repeats); experiments, deployments and
    /// templates did not change.
    Hosts(Vec<String>),
}

impl Scope {
    /// Whether the pass looks at `host`.
    pub fn includes(&self, host: &str) -> bool {
        match self {
            Scope::Full => true,
            Scope::Hosts(hosts) => hosts.binary_search_by(|h| h.as_str().cmp(host)).is_ok(),
        }
    }

    /// The same scope, also looking at `more` (ignored by a full one); a full one
    /// past [`MAX_SCOPED_HOSTS`].
    pub fn widened<'a>(self, more: impl IntoIterator<Item = &'a String>) -> Scope {
        match self {
            Scope::Full => Scope::Full,
            Scope::Hosts(hosts) => {
                let mut all: BTreeSet<String> = hosts.into_iter().collect();
                all.extend(more.into_iter().cloned());
                if all.len() > MAX_SCOPED_HOSTS {
                    Scope::Full
                } else {
                    Scope::Hosts(all.into_iter().collect())
                }
            }
        }
    }

    /// How the pass's queries of per-host state read the scope.
    pub fn filter(&self) -> HostFilter<'_> {
        match self {
            Scope::Full => HostFilter::All,
            Scope::Hosts(hosts) => HostFilter::Only(hosts),
        }
    }

    /// For logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::Hosts(_) => "hosts",
        }
    }
}

/// Changes heard since the last pass began.
#[derive(Debug, Default)]
pub struct Changes {
    full: bool,
    hosts: BTreeSet<String>,
}

impl Changes {
    /// Nothing is known about what changed: the next pass is a full one.
    pub fn unknown() -> Self {
        Changes {
            full: true,
            hosts: BTreeSet::new(),
        }
    }

    /// One notification on the reconcile channel.
    pub fn heard(&mut self, payload: &str) {
        match payload.strip_prefix("host:") {
            Some(host) if !host.is_empty() => {
                if !self.full {
                    self.hosts.insert(host.to_string());
                }
            }
            _ => self.everything(),
        }
    }

    /// Hosts whose new tasks a pass left for the next one.
    pub fn deferred(&mut self, hosts: Vec<String>) {
        if !self.full {
            self.hosts.extend(hosts);
        }
    }

    /// Anything may have changed (a reconnection, the resync, a failed pass).
    pub fn everything(&mut self) {
        self.full = true;
        self.hosts.clear();
    }

    /// Whether anything was heard.
    pub fn any(&self) -> bool {
        self.full || !self.hosts.is_empty()
    }

    /// The scope of the pass that begins now; what is heard from here on counts
    /// towards the next one.
    pub fn take(&mut self) -> Scope {
        let taken = std::mem::take(self);
        if taken.full || taken.hosts.len() > MAX_SCOPED_HOSTS {
            Scope::Full
        } else {
            Scope::Hosts(taken.hosts.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Scope {
        Scope::Hosts(names.iter().map(|h| h.to_string()).collect())
    }

    #[test]
    fn host_announcements_scope_the_next_pass_to_those_hosts() {
        let mut changes = Changes::default();
        assert!(!changes.any());
        changes.heard("host:web-2");
        changes.heard("host:web-1");
        changes.heard("host:web-2");
        assert!(changes.any());
        let scope = changes.take();
        assert_eq!(scope, hosts(&["web-1", "web-2"]));
        assert!(scope.includes("web-1") && !scope.includes("web-3"));
        assert!(
            !changes.any(),
            "taking starts the next pass's changes afresh"
        );
    }

    #[test]
    fn any_other_announcement_makes_a_full_pass_and_swallows_host_ones() {
        let mut changes = Changes::default();
        changes.heard("host:web-1");
        changes.heard("experiments");
        changes.heard("host:web-2");
        assert_eq!(changes.take(), Scope::Full);
        // An old trigger's payload (a table name) and a malformed one ask for all.
        for payload in ["host_collectors", "host:", ""] {
            let mut changes = Changes::default();
            changes.heard(payload);
            assert_eq!(changes.take(), Scope::Full, "{payload:?}");
        }
        assert_eq!(Changes::unknown().take(), Scope::Full);
    }

    #[test]
    fn deferred_hosts_make_a_pass_scoped_to_them_unless_a_full_one_is_due() {
        let mut changes = Changes::default();
        changes.heard("host:web-1");
        changes.deferred(vec!["web-3".into(), "web-2".into()]);
        assert_eq!(changes.take(), hosts(&["web-1", "web-2", "web-3"]));
        let mut changes = Changes::unknown();
        changes.deferred(vec!["web-3".into()]);
        assert_eq!(changes.take(), Scope::Full);
    }

    #[test]
    fn too_many_changed_hosts_make_a_full_pass() {
        let mut changes = Changes::default();
        for i in 0..=MAX_SCOPED_HOSTS {
            changes.heard(&format!("host:h{i}"));
        }
        assert_eq!(changes.take(), Scope::Full);
    }

    #[test]
    fn widening_adds_hosts_but_a_full_scope_stays_full() {
        let more = ["web-0".to_string(), "web-2".to_string()];
        assert_eq!(
            hosts(&["web-2", "web-9"]).widened(&more),
            hosts(&["web-0", "web-2", "web-9"])
        );
        assert_eq!(Scope::Full.widened(&more), Scope::Full);
        let fleet: Vec<String> = (0..=MAX_SCOPED_HOSTS).map(|i| format!("h{i}")).collect();
        assert_eq!(hosts(&["web-0"]).widened(&fleet), Scope::Full);
        assert!(matches!(Scope::Full.filter(), HostFilter::All));
        assert!(matches!(hosts(&["a"]).filter(), HostFilter::Only(ids) if ids == ["a"]));
    }
}
