//! The measurement path at experiment width. 100 hosts' experiment collectors are
//! pushed as agents push them (the agent's own Pushgateway client and payload: one
//! group per host, baseline and candidate), to a Pushgateway and a Prometheus run
//! with the chart's flags (`--push.disable-consistency-check`); the analyzer's own
//! measurement of the window then finds CPU and RSS for every host and variant.

use std::time::{Duration, Instant};

use chrono::Utc;
use phoenix_agent::pushgateway::Pushgateway;
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_reconciler::analyzer::{self, AnalyzerSettings};
use phoenix_reconciler::prometheus::Prometheus;
use phoenix_wire::agent::{CollectorStatus, Health, Variant};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::resource::{ExperimentSpec, HostTarget, PipelineRef};
use phoenix_wire::view::{Experiment, Phase};

const HOSTS: usize = 100;
const EXPERIMENT: &str = "wide";

fn status(host: usize, variant: Variant, cpu_seconds: f64) -> CollectorStatus {
    CollectorStatus {
        collector_id: format!("{EXPERIMENT}.{}", variant.as_str()),
        owner: EXPERIMENT.into(),
        variant,
        pipeline: "process-topk".into(),
        config_hash: "h".into(),
        pid: Some(1000 + host as u32),
        health: Health::Healthy,
        restarts: 0,
        cpu_seconds,
        rss_bytes: match variant {
            Variant::Baseline => 80 << 20,
            _ => 40 << 20,
        },
        last_error: None,
        rolled_back_from: None,
    }
}

fn experiment(hosts: &[String]) -> Experiment {
    let pipeline = |p: &str| PipelineRef {
        pipeline: p.into(),
        vars: Default::default(),
    };
    let at = Utc::now();
    Experiment {
        name: EXPERIMENT.into(),
        uid: "u".into(),
        labels: Default::default(),
        spec: ExperimentSpec {
            hosts: HostTarget {
                selector: None,
                names: Some(hosts.to_vec()),
            },
            baseline: pipeline("process-baseline"),
            candidate: pipeline("process-topk"),
            warmup: HumanDuration::from_secs(0),
            duration: HumanDuration::from_secs(20),
            load: None,
            critical_processes: vec![],
            max_hosts: None,
            criteria: Default::default(),
            promotion: Default::default(),
        },
        generation: 1,
        observed_generation: 1,
        phase: Phase::Analyzing,
        reason: None,
        target_hosts: hosts.to_vec(),
        managed_by: None,
        created_at: at,
        updated_at: at,
        phase_changed_at: at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_host_experiment_has_cpu_and_rss_for_every_host() {
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .expect(
            "Prometheus and the Pushgateway (apt-get install prometheus prometheus-pushgateway)",
        );
    let hosts: Vec<String> = (0..HOSTS).map(|i| format!("wide-{i:03}")).collect();
    let http = Pushgateway::http_settings(reqwest::Client::builder())
        .build()
        .unwrap();
    let url: reqwest::Url = measurement.pushgateway_url.parse().unwrap();
    let started = Instant::now();
    let start = Utc::now();
    let pushers: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let gateway = Pushgateway::with_client(http.clone(), url.clone(), host.clone());
            tokio::spawn(async move {
                loop {
                    // The baseline burns 0.02 cores, the candidate 0.01.
                    let t = started.elapsed().as_secs_f64();
                    let baseline = status(i, Variant::Baseline, t * 0.02);
                    let candidate = status(i, Variant::Candidate, t * 0.01);
                    gateway
                        .push(&[&baseline, &candidate])
                        .await
                        .expect("the Pushgateway takes every push");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let end = Utc::now();
    // The last pushes reach Prometheus with its next scrape.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for pusher in &pushers {
        assert!(!pusher.is_finished(), "a push failed");
        pusher.abort();
    }
    let settings = AnalyzerSettings {
        prometheus: Prometheus::new(&measurement.prometheus_url, Duration::from_secs(30)),
        price_per_million_dpm: 100.0,
        timeout: Duration::from_secs(60),
        settle: Duration::ZERO,
        rate_window: Duration::from_secs(5),
        sample_step: Duration::from_secs(1),
        early_stop_after: Duration::ZERO,
    };
    let report = analyzer::measure(&settings, &experiment(&hosts), start, end, Utc::now())
        .await
        .expect("the analyzer measures the window");
    let mut missing = Vec::new();
    for host in &hosts {
        let Some(kpis) = report.hosts.get(host) else {
            missing.push(format!("{host}: no KPIs"));
            continue;
        };
        for (variant, k) in [("baseline", &kpis.baseline), ("candidate", &kpis.candidate)] {
            if !k.cpu_cores.is_some_and(|c| c > 0.0) || k.rss_mib.is_none() {
                missing.push(format!(
                    "{host} {variant}: cpu {:?}, rss {:?}",
                    k.cpu_cores, k.rss_mib
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "every host has CPU and RSS samples for both variants; missing: {missing:?}"
    );
    let (baseline, candidate) = (
        report.baseline.cpu_cores.unwrap(),
        report.candidate.cpu_cores.unwrap(),
    );
    assert!(
        (baseline - 0.02).abs() < 0.005 && (candidate - 0.01).abs() < 0.005,
        "the CPU the pushes carried: baseline {baseline}, candidate {candidate}"
    );
    assert_eq!(report.baseline.rss_mib, Some(80.0));
}
