//! Waking agents that long-poll for tasks.
//!
//! Each API process holds one `LISTEN phoenix_agent_tasks` connection; a new task's
//! trigger sends its host id, and [`TaskWakeups`] fans that out in memory to the
//! requests waiting for that host. Waiting requests hold no database connection.
//! NOTIFY is a hint: after the listener reconnects every waiter is woken to look
//! again, and agents re-poll at the end of every wait anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phoenix_storage::{PgPool, TASKS_CHANNEL};
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;

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

/// Listens for new-task notifications until `shutdown` turns true, reconnecting
/// on failure. Reports whether it is connected through `connected`.
pub async fn listen(
    pool: PgPool,
    wakeups: TaskWakeups,
    metrics: Metrics,
    connected: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "task listener cannot connect; retrying");
                tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = shutdown.changed() => {} }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(err) = listener.listen(TASKS_CHANNEL).await {
            tracing::warn!(error = %err, "LISTEN failed; retrying");
            continue;
        }
        delay = Duration::from_millis(100);
        let _ = connected.send(true);
        // Anything announced while we were not listening is found by looking again.
        wakeups.wake_all();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        metrics.task_notifications.inc();
                        wakeups.wake(notification.payload());
                    }
                    Ok(None) => {
                        tracing::warn!("task listener lost its connection; reconnecting");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "task listener failed; reconnecting");
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
        let _ = connected.send(false);
        wakeups.wake_all();
    }
}
