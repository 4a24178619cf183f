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
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use phoenix_wire::agent::{CollectorStatus, Variant};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::{self, CONTENT_TYPE};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
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
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
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

/// The labels of one collector's series (the group key adds `job` and `host`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectorLabels {
    collector: String,
    experiment: String,
    variant: &'static str,
    pipeline: String,
}

/// The given collectors' numbers in the Prometheus text format (version 0.0.4, the
/// format the Pushgateway parses; its `Content-Type` is [`CONTENT_TYPE`]), encoded by
/// prometheus-client from a registry built for this push.
pub fn exposition(collectors: &[&CollectorStatus]) -> String {
    let cpu = Family::<CollectorLabels, Counter<f64, AtomicU64>>::default();
    let rss = Family::<CollectorLabels, Gauge<u64, AtomicU64>>::default();
    for status in collectors {
        let labels = CollectorLabels {
            collector: status.collector_id.clone(),
            experiment: status.owner.clone(),
            variant: status.variant.as_str(),
            pipeline: status.pipeline.clone(),
        };
        cpu.get_or_create(&labels).inc_by(status.cpu_seconds);
        rss.get_or_create(&labels).set(status.rss_bytes);
    }
    let mut registry = Registry::default();
    // A counter's name is written with `_total` appended.
    registry.register(
        "phoenix_collector_cpu_seconds",
        "CPU time the collector process used since it started",
        cpu,
    );
    registry.register(
        "phoenix_collector_rss_bytes",
        "Resident memory of the collector process",
        rss,
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// The longest an agent waits to push after its experiment collectors change.
const MAX_CHANGE_PUSH_DELAY: Duration = Duration::from_secs(5);

/// How long after its experiment collectors change `host_id`'s agent pushes them: a
/// share of a third of the push interval (at most [`MAX_CHANGE_PUSH_DELAY`]) fixed by
/// the host's name. An experiment starts on every host of a fleet within seconds;
/// pushing at once, 10,000 hosts would open 10,000 connections to the Pushgateway
/// together and overflow its accept queue. Spread over the window, they arrive as a
/// steady stream, and the analyzer loses nothing: it reads minutes of samples.
pub fn change_push_delay(host_id: &str, interval: Duration) -> Duration {
    // FNV-1a, then MurmurHash3's finalizer to spread similar names (web-1, web-2)
    // over the high bits: stable across versions and machines, unlike std's hasher.
    let mut hash = host_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    let share = (hash >> 11) as f64 / (1u64 << 53) as f64;
    (interval / 3).min(MAX_CHANGE_PUSH_DELAY).mul_f64(share)
}

/// Pushes every `interval`, and [`change_push_delay`] after the set of collectors
/// changes (changes in between join that push), until `stop`.
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
    let change_delay = change_push_delay(&gateway.host_id, interval);
    let mut changes = supervisor.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // When the push for a change heard since the last push is due.
    let mut change_due: Option<tokio::time::Instant> = None;
    loop {
        let change_push = async {
            match change_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            _ = change_push => {}
            _ = changes.changed() => {
                change_due.get_or_insert_with(|| tokio::time::Instant::now() + change_delay);
                continue;
            }
            _ = stop.wait_for(|&s| s) => return,
        }
        change_due = None;
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

    /// One sample line of the text format: name, labels in order, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Parses the Prometheus text format as the Pushgateway reads it: the `# TYPE`
    /// of each family and every sample, label values unescaped.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "one TYPE per family:\n{text}"
                );
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (name, mut rest) = line.split_once('{').expect("labelled sample");
            let mut labels = Vec::new();
            loop {
                let after = rest.strip_prefix(',').unwrap_or(rest);
                if let Some(value) = after.strip_prefix("} ") {
                    samples.push((name.to_owned(), labels, value.parse().expect("value")));
                    break;
                }
                let (key, after) = after.split_once("=\"").expect("label");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("closing quote") {
                        (i, '"') => break i + 1,
                        (_, '\\') => match chars.next().expect("escaped").1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        (_, other) => value.push(other),
                    }
                };
                labels.push((key.to_owned(), value));
                rest = &after[end..];
            }
        }
        (types, samples)
    }

    fn labels(collector: &str, experiment: &str, variant: &str) -> Vec<(String, String)> {
        [
            ("collector", collector),
            ("experiment", experiment),
            ("variant", variant),
            ("pipeline", "process-topk"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }

    #[test]
    fn exposition_carries_the_labels_and_numbers_of_each_collector() {
        let candidate = status("topk.candidate", "topk", Variant::Candidate);
        let baseline = CollectorStatus {
            cpu_seconds: 0.25,
            rss_bytes: 3 << 30,
            ..status("topk.baseline", "topk", Variant::Baseline)
        };
        let text = exposition(&[&candidate, &baseline]);
        let (types, mut samples) = parse(&text);
        assert_eq!(
            types,
            BTreeMap::from([
                (
                    "phoenix_collector_cpu_seconds_total".into(),
                    "counter".into()
                ),
                ("phoenix_collector_rss_bytes".into(), "gauge".into()),
            ]),
            "{text}"
        );
        samples.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let cpu = "phoenix_collector_cpu_seconds_total".to_owned();
        let rss = "phoenix_collector_rss_bytes".to_owned();
        assert_eq!(
            samples,
            vec![
                (
                    cpu.clone(),
                    labels("topk.baseline", "topk", "baseline"),
                    0.25
                ),
                (cpu, labels("topk.candidate", "topk", "candidate"), 1.5),
                (
                    rss.clone(),
                    labels("topk.baseline", "topk", "baseline"),
                    3221225472.0
                ),
                (rss, labels("topk.candidate", "topk", "candidate"), 1024.0),
            ],
            "{text}"
        );
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 text format has no EOF marker:\n{text}"
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
    fn hostile_label_values_are_escaped_and_read_back_whole() {
        let hostile = "a\"} evil{x=\"1\\\nnext";
        let collector = CollectorStatus {
            pipeline: hostile.into(),
            ..status("e.candidate", "e", Variant::Candidate)
        };
        let text = exposition(&[&collector]);
        let (_, samples) = parse(&text);
        assert_eq!(samples.len(), 2, "{text}");
        for (_, labels, _) in samples {
            assert_eq!(
                labels[3],
                ("pipeline".to_owned(), hostile.to_owned()),
                "{text}"
            );
        }
        assert_eq!(
            text.lines().count(),
            6,
            "no line broken by the value:\n{text}"
        );
    }

    #[test]
    fn a_fleet_spreads_its_change_pushes_over_the_window() {
        let interval = Duration::from_secs(15);
        let delays: Vec<Duration> = (0..10_000)
            .map(|i| change_push_delay(&format!("web-{i}"), interval))
            .collect();
        assert_eq!(
            change_push_delay("web-1", interval),
            change_push_delay("web-1", interval),
            "stable per host"
        );
        // A third of the interval, at most 5 s; each second of it gets about a
        // fifth of the fleet.
        assert!(delays.iter().all(|d| *d < Duration::from_secs(5)));
        for second in 0..5 {
            let in_second = delays.iter().filter(|d| d.as_secs() == second).count();
            assert!((1_800..2_200).contains(&in_second), "{second}: {in_second}");
        }
        let short = Duration::from_secs(3);
        assert!(change_push_delay("web-1", short) < Duration::from_secs(1));
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
