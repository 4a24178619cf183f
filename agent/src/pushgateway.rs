//! Pushes each supervised collector's resource use to a Prometheus Pushgateway, so
//! Prometheus holds per-collector CPU and memory next to the collectors' own output.
//!
//! One group per collector: `/metrics/job/phoenix_collectors/host/<host>/collector/<id>`
//! holding `phoenix_collector_cpu_seconds_total` and `phoenix_collector_rss_bytes`,
//! labelled `experiment`, `variant` and `pipeline` (plus `host` and `collector` from
//! the group key). A group is deleted as soon as its collector is gone; at start-up
//! the agent also deletes groups of this host that it no longer supervises (left by
//! a predecessor that lost its state), so nothing is left behind.

use std::collections::BTreeSet;
use std::time::Duration;

use phoenix_wire::agent::CollectorStatus;
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::supervisor::Supervisor;

/// The Pushgateway job all collector groups belong to.
pub const JOB: &str = "phoenix_collectors";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushgateway request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("pushgateway answered {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
}

/// A client for this host's groups on one Pushgateway.
#[derive(Clone)]
pub struct Pushgateway {
    http: reqwest::Client,
    base: Url,
    host_id: String,
}

impl Pushgateway {
    /// A client built from `http` (see [`crate::tls::client_builder`]).
    pub fn new(http: reqwest::ClientBuilder, base: Url, host_id: String) -> Self {
        let http = http
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        Self {
            http,
            base,
            host_id,
        }
    }

    fn group_url(&self, collector_id: &str) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http URL")
            .pop_if_empty()
            .extend([
                "metrics",
                "job",
                JOB,
                "host",
                &self.host_id,
                "collector",
                collector_id,
            ]);
        url
    }

    /// Replaces a collector's group with its current numbers.
    pub async fn push(&self, status: &CollectorStatus) -> Result<(), PushError> {
        let response = self
            .http
            .put(self.group_url(&status.collector_id))
            .body(exposition(status))
            .send()
            .await?;
        check(response).await
    }

    /// Deletes a collector's group.
    pub async fn delete(&self, collector_id: &str) -> Result<(), PushError> {
        let response = self
            .http
            .delete(self.group_url(collector_id))
            .send()
            .await?;
        check(response).await
    }

    /// The collector ids of this host's groups on the Pushgateway.
    pub async fn groups_of_this_host(&self) -> Result<BTreeSet<String>, PushError> {
        #[derive(Deserialize)]
        struct Answer {
            data: Vec<Group>,
        }
        #[derive(Deserialize)]
        struct Group {
            labels: std::collections::BTreeMap<String, String>,
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http URL")
            .pop_if_empty()
            .extend(["api", "v1", "metrics"]);
        let response = self.http.get(url).send().await?;
        if !response.status().is_success() {
            return Err(PushError::Status {
                status: response.status(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        let answer: Answer = response.json().await?;
        Ok(answer
            .data
            .into_iter()
            .filter(|g| {
                g.labels.get("job").map(String::as_str) == Some(JOB)
                    && g.labels.get("host") == Some(&self.host_id)
            })
            .filter_map(|g| g.labels.get("collector").cloned())
            .collect())
    }
}

async fn check(response: reqwest::Response) -> Result<(), PushError> {
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PushError::Status {
            status: response.status(),
            body: response.text().await.unwrap_or_default(),
        })
    }
}

/// The Prometheus text exposition of one collector's numbers.
pub fn exposition(status: &CollectorStatus) -> String {
    let labels = format!(
        "experiment=\"{}\",variant=\"{}\",pipeline=\"{}\"",
        escape(&status.owner),
        status.variant.as_str(),
        escape(&status.pipeline)
    );
    format!(
        "# TYPE phoenix_collector_cpu_seconds_total counter\n\
         phoenix_collector_cpu_seconds_total{{{labels}}} {}\n\
         # TYPE phoenix_collector_rss_bytes gauge\n\
         phoenix_collector_rss_bytes{{{labels}}} {}\n",
        status.cpu_seconds, status.rss_bytes
    )
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Pushes every `interval` and whenever the set of collectors changes, until `stop`.
pub async fn push_loop(
    gateway: Pushgateway,
    supervisor: Supervisor,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut pushed: BTreeSet<String> = match gateway.groups_of_this_host().await {
        Ok(groups) => groups,
        Err(err) => {
            tracing::warn!("cannot list pushgateway groups: {err}");
            BTreeSet::new()
        }
    };
    let mut changes = supervisor.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = changes.changed() => {}
            _ = stop.wait_for(|&s| s) => return,
        }
        let current = supervisor.statuses();
        let live: BTreeSet<String> = current.iter().map(|s| s.collector_id.clone()).collect();
        for gone in pushed.difference(&live).cloned().collect::<Vec<_>>() {
            match gateway.delete(&gone).await {
                Ok(()) => {
                    pushed.remove(&gone);
                }
                Err(err) => {
                    tracing::warn!(collector = %gone, "cannot delete pushgateway group: {err}")
                }
            }
        }
        for status in current.iter().filter(|s| s.pid.is_some()) {
            match gateway.push(status).await {
                Ok(()) => {
                    pushed.insert(status.collector_id.clone());
                }
                Err(err) => {
                    tracing::warn!(collector = %status.collector_id, "cannot push to the pushgateway: {err}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::agent::{Health, Variant};

    #[test]
    fn exposition_carries_the_labels_and_numbers() {
        let status = CollectorStatus {
            collector_id: "topk.candidate".into(),
            owner: "topk".into(),
            variant: Variant::Candidate,
            pipeline: "process-topk".into(),
            config_hash: "h".into(),
            pid: Some(7),
            health: Health::Healthy,
            restarts: 0,
            cpu_seconds: 1.5,
            rss_bytes: 1024,
            last_error: None,
            rolled_back_from: None,
        };
        let text = exposition(&status);
        assert!(text.contains(
            "phoenix_collector_cpu_seconds_total{experiment=\"topk\",variant=\"candidate\",pipeline=\"process-topk\"} 1.5\n"
        ));
        assert!(text.contains("phoenix_collector_rss_bytes{experiment=\"topk\",variant=\"candidate\",pipeline=\"process-topk\"} 1024\n"));
        let gateway = Pushgateway::new(
            crate::tls::client_builder(None).unwrap(),
            "http://127.0.0.1:9091/".parse().unwrap(),
            "web-1".into(),
        );
        assert_eq!(
            gateway.group_url("topk.candidate").as_str(),
            "http://127.0.0.1:9091/metrics/job/phoenix_collectors/host/web-1/collector/topk.candidate"
        );
    }
}
