//! Experiments run to a reasoned verdict: real collectors on two agents, a real
//! Prometheus and Pushgateway, the reconciler's analyzer; the report's numbers are
//! checked against PromQL the test runs itself.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use phoenix_e2e::bins;
use phoenix_e2e::harness::{
    AgentProcess, NamedProcesses, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_storage::templates;
use phoenix_wire::report::{ExperimentReport, Outcome, Point, TestMethod, Verdict};
use phoenix_wire::view::Phase;
use reqwest::Method;

const CRITICAL: &str = "phx-critical";

fn experiment(name: &str, candidate: &str, candidate_vars: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: web}}}}
  baseline: {{pipeline: process-baseline, vars: {{collection_interval: 3s}}}}
  candidate: {{pipeline: {candidate}, vars: {{collection_interval: 3s{candidate_vars}}}}}
  warmup: 10s
  duration: 60s
  criticalProcesses: [{CRITICAL}]
"#
    )
}

async fn report(stack: &Stack, name: &str) -> ExperimentReport {
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
    response.json().await.unwrap()
}

async fn completed(stack: &Stack, name: &str) {
    stack
        .wait_for_phase(name, Phase::Completed, Duration::from_secs(240))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_reach_verdicts_whose_numbers_match_promql() {
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .expect("prometheus and pushgateway");
    let stack = Stack::start_with(StackOptions {
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        deploy_timeout: Duration::from_secs(120),
        // The report is compared with PromQL afterwards, exactly: give late
        // remote writes (a loaded CI machine) time to land before the analyzer reads.
        analysis_delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let _critical = NamedProcesses::start(CRITICAL, 2);
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

    // A candidate that ignores the critical list: priority-filter keeping only a
    // high-priority regex that does not match the critical process.
    let mut conn = stack.pool.acquire().await.unwrap();
    let priority = templates::get(&mut conn, "process-priority-filter")
        .await
        .unwrap()
        .config;
    assert!(
        priority.contains("${env:PHOENIX_CRITICAL_PROCESSES_REGEX}"),
        "the template changed; update this test"
    );
    let drops_critical = priority.replace("${env:PHOENIX_CRITICAL_PROCESSES_REGEX}", "a^");
    sqlx::query("INSERT INTO pipeline_templates (name, description, config) VALUES ('drops-critical', 'test', $1)")
        .bind(&drops_critical)
        .execute(&mut *conn)
        .await
        .unwrap();

    // A candidate that burns CPU: process-topk plus, for every datapoint, 40 SHA-256
    // hashes (the attribute is deleted again, so its output is topk's).
    let topk = templates::get(&mut conn, "process-topk")
        .await
        .unwrap()
        .config;
    // Indented as the template's own first statement group.
    let after = &topk[topk.find("metric_statements:\n").expect("a transform") + 19..];
    let indent = &after[..after.len() - after.trim_start().len()];
    let hashes: String = (0..40)
        .map(|i| {
            format!(
                "{indent}    - set(datapoint.attributes[\"phoenix.burn\"], SHA256(Concat([metric.name, \"{i}\"], \"-\")))\n"
            )
        })
        .collect();
    let burn = format!(
        "metric_statements:\n{indent}- context: datapoint\n{indent}  statements:\n{hashes}{indent}    - delete_key(datapoint.attributes, \"phoenix.burn\")\n"
    );
    let burns_cpu = topk.replacen("metric_statements:\n", &burn, 1);
    assert_ne!(burns_cpu, topk, "the template changed; update this test");
    sqlx::query("INSERT INTO pipeline_templates (name, description, config) VALUES ('burns-cpu', 'test', $1)")
        .bind(&burns_cpu)
        .execute(&mut *conn)
        .await
        .unwrap();

    stack
        .create_experiment(&experiment("topk-pass", "process-topk", ""))
        .await;
    stack
        .create_experiment(&experiment("burn-fail", "burns-cpu", "").replace(
            "  warmup: 10s",
            "  criteria: {maxCpuOverheadCores: 0.005}\n  warmup: 10s",
        ))
        .await;
    stack
        .create_experiment(&experiment(
            "drop-fail",
            "drops-critical",
            ", high_priority_regex: '^(phoenix-agent|otelcol-phoenix)$'",
        ))
        .await;
    // A forged push: a host outside the experiment claims a huge candidate RSS.
    let forged = reqwest::Client::new()
        .put(format!(
            "{}/metrics/job/phoenix_collectors/host/intruder/collector/topk-pass.candidate",
            measurement.pushgateway_url
        ))
        .body(
            // Typed as the agents type them: a push the Pushgateway holds consistently.
            "# TYPE phoenix_collector_rss_bytes gauge\n\
             phoenix_collector_rss_bytes{experiment=\"topk-pass\",variant=\"candidate\",pipeline=\"process-topk\"} 1e12\n\
             # TYPE phoenix_collector_cpu_seconds_total counter\n\
             phoenix_collector_cpu_seconds_total{experiment=\"topk-pass\",variant=\"candidate\",pipeline=\"process-topk\"} 1e6\n",
        )
        .send()
        .await
        .unwrap();
    assert!(
        forged.status().is_success(),
        "the forged push is accepted by the Pushgateway"
    );
    // The candidate that drops a critical process is failed early, well before its
    // window ends, naming the process; leaving `running` stops its collectors.
    let failed = eventually(
        "drop-fail to be stopped early",
        Duration::from_secs(240),
        || async {
            let e = stack.experiment("drop-fail").await;
            (e.phase != Phase::Running && e.phase != Phase::Deploying && e.phase != Phase::Pending)
                .then_some(e)
        },
    )
    .await;
    assert_eq!(failed.phase, Phase::Failed, "{:?}", failed.reason);
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("stopped early") && reason.contains(CRITICAL),
        "{reason}"
    );
    let (running_at,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as(
        "SELECT at FROM experiment_events WHERE experiment = 'drop-fail' AND to_phase = 'running'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    let ran = (failed.phase_changed_at - running_at).num_seconds();
    // Warmup 10 s + duration 60 s; the early-stop window is 20 s.
    assert!(ran < 50, "stopped {ran} s after it started running");
    println!("drop-fail stopped early {ran} s after it started running: {reason}");
    eventually(
        "drop-fail's collectors to stop",
        Duration::from_secs(60),
        || async {
            // By the collectors' own environment: whatever the other experiments
            // do meanwhile, none of drop-fail's runs on any host.
            let left = agents
                .iter()
                .flat_map(|a| a.collector_processes())
                .filter(|p| {
                    p.env.get("PHOENIX_EXPERIMENT").map(String::as_str) == Some("drop-fail")
                })
                .count();
            (left == 0).then_some(())
        },
    )
    .await;
    completed(&stack, "topk-pass").await;

    // The top-k candidate passes.
    let passing = report(&stack, "topk-pass").await;
    // Printed without its evidence (thousands of lines), so that a failure's message
    // stays in the part of the output CI shows.
    println!(
        "{}",
        serde_json::to_string_pretty(&ExperimentReport {
            evidence: None,
            ..passing.clone()
        })
        .unwrap()
    );
    assert_eq!(passing.verdict, Verdict::Pass, "{:#?}", passing.criteria);
    assert!(passing.series_reduction().unwrap() >= 50.0);
    assert_eq!(passing.hosts.len(), 2);
    // The analyzer left the forged samples out, and says whose they were.
    assert_eq!(passing.ignored_hosts, ["intruder"]);
    assert!(
        passing.candidate.rss_mib.unwrap() < 10_000.0,
        "{:?}",
        passing.candidate
    );

    // The evidence behind it, for the console's charts: both variants over the
    // window, and exactly the CPU samples Mann–Whitney compared (fewer than the bound).
    let evidence = passing
        .evidence
        .as_ref()
        .expect("the report keeps its evidence");
    for (variant, ev) in [
        ("baseline", &evidence.baseline),
        ("candidate", &evidence.candidate),
    ] {
        assert!(
            ev.series.len() > 1,
            "{variant} series over time: {:?}",
            ev.series
        );
        assert!(
            !ev.datapoints_per_minute.is_empty(),
            "{variant} DPM over time"
        );
        assert_eq!(ev.cpu_cores.len(), 2, "{variant} CPU per host");
        assert_eq!(ev.rss_mib.len(), 2, "{variant} RSS per host");
        assert!(ev.series.iter().all(|(t, _)| {
            let t = *t as i64;
            t >= passing.window_start.timestamp() && t <= passing.window_end.timestamp()
        }));
    }
    let last = |points: &[Point]| points.last().expect("points").1;
    assert!(
        last(&evidence.candidate.series) < last(&evidence.baseline.series),
        "candidate series end below the baseline's: {} vs {}",
        last(&evidence.candidate.series),
        last(&evidence.baseline.series)
    );
    let samples = |m: &BTreeMap<String, Vec<Point>>| m.values().map(Vec::len).sum::<usize>();
    let cpu = passing.cpu_test.as_ref().expect("a CPU test");
    assert_eq!(samples(&evidence.baseline.cpu_cores), cpu.baseline_samples);
    assert_eq!(
        samples(&evidence.candidate.cpu_cores),
        cpu.candidate_samples
    );
    // CPU has resolution: a rate over the CPU window is non-zero at the median, and
    // the change comes with the paired test (two hosts: signed-rank across separate
    // windows) and a confidence interval around its estimate.
    for (variant, ev) in [
        ("baseline", &evidence.baseline),
        ("candidate", &evidence.candidate),
    ] {
        let mut values: Vec<f64> = ev.cpu_cores.values().flatten().map(|p| p.1).collect();
        values.sort_by(f64::total_cmp);
        assert!(
            values[values.len() / 2] > 0.0,
            "{variant} CPU median is 0: {values:?}"
        );
    }
    assert_eq!(cpu.method, Some(TestMethod::SignedRankWindows), "{cpu:?}");
    assert_eq!(cpu.hosts, Some(2), "{cpu:?}");
    let (low, high) = (cpu.ci_low.expect("a CI"), cpu.ci_high.expect("a CI"));
    assert!(low <= cpu.shift && cpu.shift <= high, "{cpu:?}");
    let control = passing.error_control.as_ref().expect("error control");
    assert_eq!(control.tested, ["cpuOverhead", "memoryOverhead"]);
    assert!(
        passing
            .criteria
            .iter()
            .all(|c| c.outcome != Outcome::NoResolution),
        "{:#?}",
        passing.criteria
    );

    // The candidate that burns CPU fails the CPU criterion, with its numbers.
    completed(&stack, "burn-fail").await;
    let burning = report(&stack, "burn-fail").await;
    let cpu_result = burning
        .criteria
        .iter()
        .find(|c| c.criterion == "cpuOverhead")
        .unwrap();
    println!("burn-fail: {}", cpu_result.reason);
    assert_eq!(burning.verdict, Verdict::Fail, "{:#?}", burning.criteria);
    assert_eq!(cpu_result.outcome, Outcome::Fail, "{}", cpu_result.reason);
    let burn_test = burning.cpu_test.as_ref().unwrap();
    assert!(burn_test.shift > 0.005, "{burn_test:?}");
    assert!(burn_test.ci_low.unwrap() > 0.0, "{burn_test:?}");
    assert!(burn_test.p_adjusted.unwrap() <= 0.05, "{burn_test:?}");

    // The report's numbers are what PromQL says over the same window.
    let prom = measurement.prometheus();
    for (variant, kpis) in [
        ("baseline", &passing.baseline),
        ("candidate", &passing.candidate),
    ] {
        let selector = format!(r#"{{phoenix_experiment="topk-pass",phoenix_variant="{variant}"}}"#);
        let series = prom
            .series(&selector, passing.window_start, passing.window_end)
            .await
            .unwrap();
        assert_eq!(kpis.series, series.len() as u64, "{variant} series");
        let names: BTreeSet<&String> = series.iter().filter_map(|l| l.get("__name__")).collect();
        let window_ms = (passing.window_end - passing.window_start).num_milliseconds();
        let mut datapoints = 0.0;
        for name in names {
            let query = format!(
                r#"sum(count_over_time({{__name__="{name}",phoenix_experiment="topk-pass",phoenix_variant="{variant}"}}[{window_ms}ms]))"#
            );
            datapoints += prom
                .query(&query, Some(passing.window_end))
                .await
                .unwrap()
                .first()
                .map_or(0.0, |s| s.value);
        }
        let dpm = datapoints / (window_ms as f64 / 60_000.0);
        assert!(
            (kpis.datapoints_per_minute - dpm).abs() < 1e-6,
            "{variant} DPM {} vs {dpm}",
            kpis.datapoints_per_minute
        );
        assert!(
            (kpis.monthly_cost - dpm / 1e6 * passing.price_per_million_dpm).abs() < 1e-9,
            "{variant} cost {} for {dpm} DPM",
            kpis.monthly_cost
        );
        let rss_query = format!(
            r#"avg(avg_over_time(phoenix_collector_rss_bytes{{experiment="topk-pass",variant="{variant}",host!="intruder"}}[{window_ms}ms])) / 1048576"#
        );
        let rss = prom
            .query(&rss_query, Some(passing.window_end))
            .await
            .unwrap()[0]
            .value;
        let reported = kpis.rss_mib.expect("rss measured");
        assert!(
            (reported - rss).abs() / rss < 0.15,
            "{variant} RSS {reported} MiB vs PromQL {rss} MiB"
        );
        assert!(kpis.cpu_cores.is_some(), "{variant} CPU measured");
        assert!(
            kpis.critical_processes.contains(&CRITICAL.to_string()),
            "{variant} saw {CRITICAL}"
        );
    }
    assert!(passing.cpu_test.is_some() && passing.memory_test.is_some());

    // The CLI shows the same report side by side.
    let out = Command::new(bins::binary("phoenix"))
        .args(["experiment", "report", "topk-pass"])
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
        text.contains("verdict PASS")
            && text.contains("BASELINE")
            && text.contains("web-2")
            && text.contains("signed-rank across separate windows")
            && text.contains("Across criteria: Holm"),
        "{text}"
    );
    println!("{text}");

    drop(agents);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prometheus_down_analysis_retries_then_fails_and_records_no_pass() {
    let stack = Stack::start_with(StackOptions {
        prometheus_url: None, // a port that refuses connections
        analysis_timeout: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    eventually("the agent to register", Duration::from_secs(30), || async {
        let r = stack
            .request(Method::GET, "/api/v1/hosts/web-1", VIEWER_TOKEN)
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    stack
        .create_experiment(
            r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {name: blind}
spec:
  hosts: {names: [web-1]}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk}
  warmup: 0s
  duration: 2s
"#,
        )
        .await;
    stack
        .wait_for_phase("blind", Phase::Analyzing, Duration::from_secs(60))
        .await;
    let failed = eventually(
        "the analysis to give up",
        Duration::from_secs(60),
        || async {
            let e = stack.experiment("blind").await;
            (e.phase == Phase::Failed).then_some(e)
        },
    )
    .await;
    let reason = failed.reason.unwrap();
    assert!(reason.contains("analysis failed after"), "{reason}");
    assert!(reason.contains("cannot reach Prometheus"), "{reason}");
    assert!(reason.contains("no verdict was recorded"), "{reason}");
    let (attempts, verdict): (i32, Option<String>) = sqlx::query_as(
        "SELECT attempts, verdict FROM experiment_results WHERE experiment = 'blind'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert!(attempts >= 2, "it waited and retried ({attempts} attempts)");
    assert_eq!(verdict, None, "nothing is recorded as a pass");
    let response = stack
        .request(
            Method::GET,
            "/api/v1/experiments/blind/report",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    drop(agent);
    stack.shutdown().await;
}
