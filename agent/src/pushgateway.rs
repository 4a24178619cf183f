//! Pushes the resource use of each collector in a running experiment to a Prometheus
//! Pushgateway, so Prometheus holds per-collector CPU and memory next to the
//! collectors' own output.
//!
//! One group per host: `/metrics/job/phoenix_collectors/host/<host>` holding
//! `phoenix_collector_cpu_seconds_total` and `phoenix_collector_rss_bytes` of each of
//! the host's experiment collectors (baseline and candidate), labelled `collector`,
//! `experiment`, `variant` and `pipeline` (plus `host` from the group key). Each push
//! replaces the whole group, so a collector that is gone leaves it with the next push;
//! when none is left the group is deleted. Standing collectors are not pushed: nothing
//! judges them, and their CPU and RSS reach the api in the agent's status reports.
//! So a fleet pushes one request per experiment host and push interval, however many
//! hosts run only standing pipelines (docs/ARCHITECTURE.md, "The measurement path").
//!
//! At start-up the agent deletes this host's groups of earlier agents: per-collector
//! groups (`…/host/<host>/collector/<id>`, as agents of protocol 2.1 and before pushed) and a host group it has
//! nothing to push to.

use std::collections::BTreeMap;
use std::time::Duration;

use phoenix_wire::agent::{CollectorStatus, Variant};
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
        Self::with_client(
            Self::http_settings(http).build().expect("HTTP client"),
            base,
            host_id,
        )
    }

    /// The settings of the agent's Pushgateway client. It keeps no idle connection:
    /// a push every interval opens one, so an idle agent holds only its long-poll, and
    /// a Pushgateway serving 25,000 hosts holds a connection per push in flight, not
    /// one per host (a process may hold 20,000 open files on the benchmark's machine).
    pub fn http_settings(http: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        http.timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
    }

    /// A client for `host_id`'s group sharing `http` (built with [`Self::http_settings`]);
    /// the fleet benchmark's simulated agents share one.
    pub fn with_client(http: reqwest::Client, base: Url, host_id: String) -> Self {
        Self {
            http,
            base,
            host_id,
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn group_url(&self) -> Url {
        self.url(&["metrics", "job", JOB, "host", &self.host_id])
    }

    /// Replaces this host's group with the current numbers of `collectors`.
    pub async fn push(&self, collectors: &[&CollectorStatus]) -> Result<(), PushError> {
        let response = self
            .http
            .put(self.group_url())
            .body(exposition(collectors))
            .send()
            .await?;
        check(response).await
    }

    /// Deletes this host's group.
    pub async fn delete(&self) -> Result<(), PushError> {
        let response = self.http.delete(self.group_url()).send().await?;
        check(response).await
    }

    /// Deletes a per-collector group an earlier agent left.
    async fn delete_legacy(&self, collector_id: &str) -> Result<(), PushError> {
        let url = self.url(&[
            "metrics",
            "job",
            JOB,
            "host",
            &self.host_id,
            "collector",
            collector_id,
        ]);
        check(self.http.delete(url).send().await?).await
    }

    /// The grouping labels of this host's groups on the Pushgateway.
    async fn groups_of_this_host(&self) -> Result<Vec<BTreeMap<String, String>>, PushError> {
        #[derive(Deserialize)]
        struct Answer {
            data: Vec<Group>,
        }
        #[derive(Deserialize)]
        struct Group {
            labels: BTreeMap<String, String>,
        }
        let response = self
            .http
            .get(self.url(&["api", "v1", "metrics"]))
            .send()
            .await?;
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
            .map(|g| g.labels)
            .filter(|labels| {
                labels.get("job").map(String::as_str) == Some(JOB)
                    && labels.get("host") == Some(&self.host_id)
            })
            .collect())
    }

    /// Deletes the groups earlier agents of this host left; returns whether this
    /// host's own group is there (so that it is deleted when nothing is pushed).
    async fn clean_up_earlier_groups(&self) -> Result<bool, PushError> {
        let mut host_group = false;
        for labels in self.groups_of_this_host().await? {
            match labels.get("collector") {
                Some(collector) => self.delete_legacy(collector).await?,
                None => host_group = true,
            }
        }
        Ok(host_group)
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

/// Whether a collector's resource use is pushed: it is measured by an experiment.
pub fn is_measured(status: &CollectorStatus) -> bool {
    status.pid.is_some() && status.variant != Variant::Standing
}

/// The Prometheus text exposition of the given collectors' numbers.
pub fn exposition(collectors: &[&CollectorStatus]) -> String {
    let labels = |status: &CollectorStatus| {
        format!(
            "collector=\"{}\",experiment=\"{}\",variant=\"{}\",pipeline=\"{}\"",
            escape(&status.collector_id),
            escape(&status.owner),
            status.variant.as_str(),
            escape(&status.pipeline)
        )
    };
    let mut text = String::from("# TYPE phoenix_collector_cpu_seconds_total counter\n");
    for status in collectors {
        text += &format!(
            "phoenix_collector_cpu_seconds_total{{{}}} {}\n",
            labels(status),
            status.cpu_seconds
        );
    }
    text += "# TYPE phoenix_collector_rss_bytes gauge\n";
    for status in collectors {
        text += &format!(
            "phoenix_collector_rss_bytes{{{}}} {}\n",
            labels(status),
            status.rss_bytes
        );
    }
    text
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
    // Whether this host's group may be on the Pushgateway (so a push of nothing deletes it).
    let mut group_held = match gateway.clean_up_earlier_groups().await {
        Ok(held) => held,
        Err(err) => {
            tracing::warn!("cannot clean up earlier pushgateway groups: {err}");
            true
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
        let measured: Vec<&CollectorStatus> = current.iter().filter(|s| is_measured(s)).collect();
        if measured.is_empty() {
            if group_held {
                match gateway.delete().await {
                    Ok(()) => group_held = false,
                    Err(err) => tracing::warn!("cannot delete the pushgateway group: {err}"),
                }
            }
            continue;
        }
        match gateway.push(&measured).await {
            Ok(()) => group_held = true,
            Err(err) => tracing::warn!("cannot push to the pushgateway: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::agent::Health;

    fn status(id: &str, owner: &str, variant: Variant) -> CollectorStatus {
        CollectorStatus {
            collector_id: id.into(),
            owner: owner.into(),
            variant,
            pipeline: "process-topk".into(),
            config_hash: "h".into(),
            pid: Some(7),
            health: Health::Healthy,
            restarts: 0,
            cpu_seconds: 1.5,
            rss_bytes: 1024,
            last_error: None,
            rolled_back_from: None,
        }
    }

    #[test]
    fn exposition_carries_the_labels_and_numbers_of_each_collector() {
        let candidate = status("topk.candidate", "topk", Variant::Candidate);
        let baseline = status("topk.baseline", "topk", Variant::Baseline);
        let text = exposition(&[&candidate, &baseline]);
        assert!(text.contains(
            "phoenix_collector_cpu_seconds_total{collector=\"topk.candidate\",experiment=\"topk\",variant=\"candidate\",pipeline=\"process-topk\"} 1.5\n"
        ));
        assert!(text.contains("phoenix_collector_rss_bytes{collector=\"topk.baseline\",experiment=\"topk\",variant=\"baseline\",pipeline=\"process-topk\"} 1024\n"));
        assert_eq!(
            text.matches("# TYPE").count(),
            2,
            "one TYPE per family:\n{text}"
        );
        let gateway = Pushgateway::new(
            crate::tls::client_builder(None).unwrap(),
            "http://127.0.0.1:9091/".parse().unwrap(),
            "web-1".into(),
        );
        assert_eq!(
            gateway.group_url().as_str(),
            "http://127.0.0.1:9091/metrics/job/phoenix_collectors/host/web-1"
        );
    }

    #[test]
    fn only_running_experiment_collectors_are_measured() {
        assert!(is_measured(&status("e.candidate", "e", Variant::Candidate)));
        assert!(is_measured(&status("e.baseline", "e", Variant::Baseline)));
        assert!(!is_measured(&status("d", "d", Variant::Standing)));
        let stopped = CollectorStatus {
            pid: None,
            ..status("e.baseline", "e", Variant::Baseline)
        };
        assert!(!is_measured(&stopped));
    }
}
