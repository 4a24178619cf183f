//! Waking agents that long-poll for tasks.
//!
//! A new task's trigger announces its host id on `phoenix_agent_tasks`; the
//! process's listener (`super::listen`) hands it to [`TaskWakeups`], which fans it
//! out in memory to the
//! requests waiting for that host. Waiting requests hold no database connection.
//! NOTIFY is a hint: after the listener reconnects every waiter is woken to look
//! again, and agents re-poll at the end of every wait anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Per-host wake-up signals for waiting long-polls.
#[derive(Clone, Default)]
pub struct TaskWakeups {
    hosts: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

/// A registration for one host's wake-ups; dropping it unregisters.
pub struct Subscription {
    wakeups: TaskWakeups,
    host_id: String,
    notify: Arc<Notify>,
}

impl Subscription {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut hosts = self.wakeups.hosts.lock().expect("wakeups lock");
        // Two references left (the map's and ours): nobody else waits for this host.
        if Arc::strong_count(&self.notify) == 2 {
            hosts.remove(&self.host_id);
        }
    }
}

impl TaskWakeups {
    pub fn subscribe(&self, host_id: &str) -> Subscription {
        let mut hosts = self.hosts.lock().expect("wakeups lock");
        let notify = hosts.entry(host_id.to_string()).or_default().clone();
        Subscription {
            wakeups: self.clone(),
            host_id: host_id.to_string(),
            notify,
        }
    }

    pub fn wake(&self, host_id: &str) {
        let hosts = self.hosts.lock().expect("wakeups lock");
        if let Some(notify) = hosts.get(host_id) {
            notify.notify_waiters();
        }
    }

    pub fn wake_all(&self) {
        let hosts = self.hosts.lock().expect("wakeups lock");
        for notify in hosts.values() {
            notify.notify_waiters();
        }
    }

    /// Number of hosts with at least one waiting request.
    pub fn waiting_hosts(&self) -> usize {
        self.hosts.lock().expect("wakeups lock").len()
    }
}
