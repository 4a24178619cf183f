//! Last known good: an updated collector config is on trial until it has run
//! healthy for [`TRIAL_PERIOD`]. If it fails its start health check, or crash-loops
//! ([`CRASH_LOOP_EXITS`] exits) while on trial, the agent goes back to the config
//! that ran healthy before (the trial's `previous`) and reports both: the config it
//! runs now, and the one it left with its error (`rolledBackFrom`). What happens
//! next is the reconciler's to decide; it does not send the failed config to this
//! host again while the agent reports it.
//!
//! The trial is recorded in `state.json` with the collector (wall-clock start, so it
//! survives an agent restart), and so is the rollback.
//!
//! [`judge`] is the decision, pure; the keeper carries it out.

use std::time::Duration;

use phoenix_wire::agent::CollectorSpec;
use serde::{Deserialize, Serialize};

/// How long an updated config must run healthy before it is the last known good.
pub const TRIAL_PERIOD: Duration = Duration::from_secs(120);
/// Exits of an updated config during its trial that make a crash loop.
pub const CRASH_LOOP_EXITS: u32 = 3;

/// An updated config on trial, and what it replaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trial {
    /// The config that ran healthy before the update: what a failure goes back to.
    pub previous: CollectorSpec,
    /// When the updated config was first started, in seconds since the Unix epoch.
    pub since_unix: u64,
    /// Times the updated config's process exited since.
    #[serde(default)]
    pub exits: u32,
}

/// What happened to a collector on trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The start did not become healthy (it exited first, or timed out).
    StartFailed,
    /// Its process exited after it had been healthy (the count includes this one).
    Exited { exits: u32 },
    /// Its health check passes.
    Healthy,
}

/// What the keeper does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on as without a trial (restart with backoff after an exit).
    Carry,
    /// The trial is over: the updated config is now the last known good.
    Accept,
    /// Go back to the previous config.
    RollBack,
}

/// The decision about a collector on trial at `now_unix`.
pub fn judge(trial: &Trial, event: Event, now_unix: u64) -> Verdict {
    let on_trial_for = Duration::from_secs(now_unix.saturating_sub(trial.since_unix));
    match event {
        Event::StartFailed => Verdict::RollBack,
        Event::Exited { exits } if exits >= CRASH_LOOP_EXITS => Verdict::RollBack,
        Event::Exited { .. } => Verdict::Carry,
        Event::Healthy if on_trial_for >= TRIAL_PERIOD => Verdict::Accept,
        Event::Healthy => Verdict::Carry,
    }
}

/// The config a collector replaced by an update goes back to if the update fails:
/// the one it ran, if that was healthy; else the last known good that one was on
/// trial against (an update of an update still on trial); else none.
pub fn previous_for_update(
    running: &CollectorSpec,
    running_healthy: bool,
    running_trial: Option<&Trial>,
) -> Option<CollectorSpec> {
    match (running_healthy, running_trial) {
        (true, _) => Some(running.clone()),
        (false, Some(trial)) => Some(trial.previous.clone()),
        (false, None) => None,
    }
}

/// Seconds since the Unix epoch now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use phoenix_wire::agent::Variant;

    use super::*;

    fn spec(config: &str) -> CollectorSpec {
        CollectorSpec::new(
            "standing.web".into(),
            "web".into(),
            Variant::Standing,
            "process-topk".into(),
            config,
            BTreeMap::new(),
        )
    }

    fn trial(since: u64) -> Trial {
        Trial {
            previous: spec("good"),
            since_unix: since,
            exits: 0,
        }
    }

    #[test]
    fn an_update_that_fails_its_start_goes_back_at_once() {
        assert_eq!(
            judge(&trial(1000), Event::StartFailed, 1001),
            Verdict::RollBack
        );
    }

    #[test]
    fn a_crash_loop_during_the_trial_goes_back_single_exits_are_restarted() {
        let t = trial(1000);
        assert_eq!(judge(&t, Event::Exited { exits: 1 }, 1005), Verdict::Carry);
        assert_eq!(judge(&t, Event::Exited { exits: 2 }, 1010), Verdict::Carry);
        assert_eq!(
            judge(
                &t,
                Event::Exited {
                    exits: CRASH_LOOP_EXITS
                },
                1015
            ),
            Verdict::RollBack
        );
    }

    #[test]
    fn healthy_for_the_whole_trial_becomes_the_last_known_good() {
        let t = trial(1000);
        assert_eq!(judge(&t, Event::Healthy, 1000 + 10), Verdict::Carry);
        let end = 1000 + TRIAL_PERIOD.as_secs();
        assert_eq!(judge(&t, Event::Healthy, end), Verdict::Accept);
        // A clock that went backwards keeps the trial going rather than ending it.
        assert_eq!(judge(&t, Event::Healthy, 10), Verdict::Carry);
    }

    #[test]
    fn what_an_update_goes_back_to() {
        let running = spec("v2");
        assert_eq!(
            previous_for_update(&running, true, None),
            Some(running.clone())
        );
        // v2 itself on trial against "good" and not healthy now: back to "good".
        let t = trial(0);
        assert_eq!(
            previous_for_update(&running, false, Some(&t)),
            Some(spec("good"))
        );
        assert_eq!(
            previous_for_update(&running, true, Some(&t)),
            Some(running.clone())
        );
        // Nothing healthy to go back to.
        assert_eq!(previous_for_update(&running, false, None), None);
    }
}
