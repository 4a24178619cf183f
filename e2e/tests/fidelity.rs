//! Fidelity, end to end with real collectors on two agents, a real Prometheus and
//! Pushgateway: a candidate that keeps every process name (aggregated) passes
//! `minTopKRecall` and `maxTotalError`; one that keeps only the critical processes
//! fails `minTopKRecall` with its numbers; a candidate whose collector runs over
//! its memory limit is stopped early; bad criteria are refused with nothing stored.

use std::process::Command;
use std::time::Duration;

use phoenix_e2e::bins;
use phoenix_e2e::harness::{
    AgentProcess, NamedProcesses, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::report::{ExperimentReport, Outcome, Verdict};
use phoenix_wire::view::Phase;
use reqwest::Method;

const CRITICAL: &str = "phx-critical";

fn experiment(name: &str, candidate: &str, vars: &str, criteria: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: web}}}}
  baseline: {{pipeline: process-baseline, vars: {{collection_interval: 3s}}}}
  candidate: {{pipeline: {candidate}, vars: {{collection_interval: 3s{vars}}}}}
  warmup: 10s
  duration: 60s
  criticalProcesses: [{CRITICAL}]
  criteria: {{minSeriesReduction: 10{criteria}}}
"#
    )
}

async fn report(stack: &Stack, name: &str) -> ExperimentReport {
    stack
        .wait_for_phase(name, Phase::Completed, Duration::from_secs(240))
        .await;
    let response = stack
        .request(
            Method::GET,
            &format!("/api/v1/experiments/{name}/report"),
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "report of {name}");
    let report: ExperimentReport = response.json().await.unwrap();
    println!(
        "{name}: verdict {}\n{:#?}\n{}",
        report.verdict.as_str(),
        report.criteria,
        serde_json::to_string_pretty(&report.fidelity).unwrap()
    );
    report
}

fn criterion<'r>(
    report: &'r ExperimentReport,
    name: &str,
) -> &'r phoenix_wire::report::CriterionResult {
    report
        .criteria
        .iter()
        .find(|c| c.criterion == name)
        .unwrap_or_else(|| panic!("{name} judged: {:#?}", report.criteria))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fidelity_criteria_tell_a_faithful_candidate_from_one_that_drops_processes() {
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .expect("prometheus and pushgateway");
    let stack = Stack::start_with(StackOptions {
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        deploy_timeout: Duration::from_secs(120),
        analysis_delay: Duration::from_secs(15),
        ..Default::default()
    })
    .await;
    let _critical = NamedProcesses::start(CRITICAL, 2);

    // Bad criteria are refused, naming the field, and nothing is stored.
    for (criteria, field) in [
        (", minTopKRecall: 150", "spec.criteria.minTopKRecall"),
        (", maxTotalError: -5", "spec.criteria.maxTotalError"),
    ] {
        let response = stack
            .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
            .header("content-type", "application/yaml")
            .body(experiment("bad", "process-aggregated", "", criteria))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 422, "{body}");
        assert!(body.contains(field), "{body}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a refused experiment is not stored");

    let agents: Vec<AgentProcess> = ["web-1", "web-2"]
        .into_iter()
        .map(|host| {
            AgentProcess::spawn_with(
                &stack.api_url,
                host,
                &[("role", "web")],
                &bins::collector(),
                Some(&measurement.pushgateway_url),
            )
        })
        .collect();
    eventually(
        "both agents to register",
        Duration::from_secs(30),
        || async {
            let r = stack
                .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
                .send()
                .await
                .ok()?;
            let hosts: phoenix_wire::view::List<phoenix_wire::view::Host> = r.json().await.ok()?;
            (hosts.items.len() == 2).then_some(())
        },
    )
    .await;

    // Aggregated keeps one set of series per executable name: every busy process
    // stays visible, and the totals are sums of the same processes.
    stack
        .create_experiment(&experiment(
            "keeps-names",
            "process-aggregated",
            "",
            ", minTopKRecall: 80, maxTotalError: 50",
        ))
        .await;
    // Priority-filter with no high-priority regex keeps the critical processes only.
    stack
        .create_experiment(&experiment(
            "keeps-few",
            "process-priority-filter",
            "",
            ", minTopKRecall: 80",
        ))
        .await;
    // Top-k whose collector may use 32 MiB: a collector is larger than that.
    stack
        .create_experiment(&experiment(
            "over-memory",
            "process-topk",
            ", memory_limit_mib: 32",
            "",
        ))
        .await;

    let failed = eventually(
        "over-memory to be stopped early",
        Duration::from_secs(240),
        || async {
            let e = stack.experiment("over-memory").await;
            (e.phase != Phase::Running && e.phase != Phase::Deploying && e.phase != Phase::Pending)
                .then_some(e)
        },
    )
    .await;
    let reason = failed.reason.clone().unwrap_or_default();
    println!("over-memory: {reason}");
    assert_eq!(failed.phase, Phase::Failed, "{reason}");
    assert!(
        reason.contains("stopped early")
            && reason.contains("the candidate's collector on web-")
            && reason.contains("over its limit of 32 MiB"),
        "{reason}"
    );
    assert!(
        !reason.contains("baseline's collector"),
        "the baseline stays within its 256 MiB: {reason}"
    );

    let faithful = report(&stack, "keeps-names").await;
    let fidelity = faithful.fidelity.as_ref().expect("fidelity measured");
    assert_eq!(fidelity.top_k, 10);
    assert_eq!(
        fidelity.hosts.keys().collect::<Vec<_>>(),
        ["web-1", "web-2"]
    );
    for (host, kpis) in &fidelity.hosts {
        assert!(kpis.steps >= 3, "{host}: {kpis:?}");
        for value in [kpis.cpu_top_k_recall, kpis.memory_top_k_recall] {
            let value = value.unwrap_or_else(|| panic!("{host} recall measured: {kpis:?}"));
            assert!(value >= 80.0, "{host}: {kpis:?}");
        }
    }
    let recall = criterion(&faithful, "topKRecall");
    assert_eq!(recall.outcome, Outcome::Pass, "{}", recall.reason);
    let total = criterion(&faithful, "totalError");
    assert_eq!(total.outcome, Outcome::Pass, "{}", total.reason);
    assert_eq!(faithful.verdict, Verdict::Pass, "{:#?}", faithful.criteria);

    let lossy = report(&stack, "keeps-few").await;
    let recall = criterion(&lossy, "topKRecall");
    assert_eq!(recall.outcome, Outcome::Fail, "{}", recall.reason);
    assert!(
        recall.reason.contains("needs at least 80% on every host"),
        "{}",
        recall.reason
    );
    assert_eq!(lossy.verdict, Verdict::Fail, "{:#?}", lossy.criteria);
    // It kept the critical processes and cut series: only fidelity fails it.
    for name in ["seriesReduction", "criticalRetention"] {
        let c = criterion(&lossy, name);
        assert_eq!(c.outcome, Outcome::Pass, "{name}: {}", c.reason);
    }
    let overall = &lossy.fidelity.as_ref().expect("fidelity measured").overall;
    assert!(
        overall.memory_top_k_recall.unwrap() < 50.0,
        "a candidate with two sleeping processes misses the busy ones: {overall:?}"
    );
    assert!(
        overall.memory_total_error.unwrap() > 50.0,
        "and most of the host's process memory: {overall:?}"
    );
    assert!(
        !lossy.criteria.iter().any(|c| c.criterion == "totalError"),
        "not asked for, not judged"
    );
    let control = lossy.error_control.as_ref().expect("error control");
    assert!(
        control
            .summary
            .contains("top-k recall, total error) are thresholds"),
        "{}",
        control.summary
    );

    // The CLI shows both, per host.
    let out = Command::new(bins::binary("phoenix"))
        .args(["experiment", "report", "keeps-few"])
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("verdict FAIL")
            && text.contains("topKRecall")
            && text.contains("MEMORY TOP-10 RECALL")
            && text
                .lines()
                .any(|l| l.starts_with("web-2") && l.contains('%')),
        "{text}"
    );
    println!("{text}");

    drop(agents);
    stack.shutdown().await;
}
