//! `phoenix pipeline import` on three real configs (`docs/import-examples/`): the
//! OpenTelemetry Collector's own default config and a node collector with the
//! `otlp` receiver and a batch processor become templates, with every change
//! reported; one with components outside the build is refused naming each, and
//! nothing is stored. Then an experiment whose baseline is the imported node
//! collector runs on the real collector against a real Prometheus and reaches a
//! verdict.

use std::process::Command;
use std::time::Duration;

use phoenix_e2e::bins::{self, binary};
use phoenix_e2e::harness::{
    ADMIN_TOKEN, AgentProcess, NamedProcesses, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::report::ExperimentReport;
use phoenix_wire::view::{Phase, PipelineTemplate};
use reqwest::Method;

fn example(name: &str) -> String {
    format!(
        "{}/../docs/import-examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `phoenix ARGS` as an admin: (success, stdout, stderr).
fn phoenix(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", ADMIN_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn template_status(stack: &Stack, name: &str) -> u16 {
    stack
        .request(
            Method::GET,
            &format!("/api/v1/pipelines/{name}"),
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_configs_become_templates_and_an_imported_baseline_reaches_a_verdict() {
    let collector = bins::collector();
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .expect("prometheus and pushgateway");
    let stack = Stack::start_with(StackOptions {
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        collector_bin: Some(collector.clone()),
        deploy_timeout: Duration::from_secs(120),
        ..Default::default()
    })
    .await;

    // The collector's own default config: a dry run first stores nothing.
    let default = example("otelcol-default.yaml");
    let (ok, out, err) = phoenix(
        &stack,
        &[
            "pipeline",
            "import",
            "-f",
            &default,
            "--name",
            "otelcol-default",
            "--dry-run",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(template_status(&stack, "otelcol-default").await, 404);
    let (ok, out, err) = phoenix(
        &stack,
        &[
            "pipeline",
            "import",
            "-f",
            &default,
            "--name",
            "otelcol-default",
        ],
    );
    assert!(ok, "{err}");
    for change in [
        "service.pipelines.traces: removed",
        "receivers.jaeger: removed",
        "extensions.zpages: removed",
        "exporters.debug: removed",
        "receivers.otlp.protocols.grpc.endpoint: 0.0.0.0:4317 → 127.0.0.1:4317",
    ] {
        assert!(out.contains(change), "`{change}` not reported:\n{out}");
    }
    assert_eq!(template_status(&stack, "otelcol-default").await, 200);

    // A node collector with the otlp receiver and a batch processor; -o json.
    let (ok, out, err) = phoenix(
        &stack,
        &[
            "pipeline",
            "import",
            "-f",
            &example("node-collector.yaml"),
            "--name",
            "current",
            "-o",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["plan"][0]["action"], "create", "{out}");
    assert!(
        answer["changes"].as_array().unwrap().iter().any(|c| c
            .as_str()
            .unwrap()
            .starts_with("exporters.otlphttp/vendor: removed")),
        "{out}"
    );
    let template: PipelineTemplate = stack
        .request(Method::GET, "/api/v1/pipelines/current", VIEWER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for kept in [
        "memory_limiter",
        "resourcedetection/system",
        "batch",
        "send_batch_size: 1024",
    ] {
        assert!(
            template.config.contains(kept),
            "{kept} not kept:\n{}",
            template.config
        );
    }
    assert!(!template.config.contains("otlp.vendor.example"));

    // Components outside the build: refused, each named, nothing stored.
    let (ok, _, err) = phoenix(
        &stack,
        &[
            "pipeline",
            "import",
            "-f",
            &example("unsupported.yaml"),
            "--name",
            "gateway",
        ],
    );
    assert!(!ok);
    for name in [
        "receivers.prometheus",
        "processors.k8sattributes",
        "connectors.spanmetrics",
    ] {
        assert!(err.contains(name), "{name} not named:\n{err}");
    }
    assert_eq!(template_status(&stack, "gateway").await, 404);

    // The imported config as an experiment's baseline, on the real collector.
    let _critical = NamedProcesses::start("phx-import-crit", 2);
    let _agent = AgentProcess::spawn_with(
        &stack.api_url,
        "import-host",
        &[("role", "import")],
        &collector,
        Some(&measurement.pushgateway_url),
    );
    eventually("the agent to register", Duration::from_secs(60), || async {
        let r = stack
            .request(Method::GET, "/api/v1/hosts/import-host", VIEWER_TOKEN)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    stack
        .create_experiment(
            r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {name: vs-current}
spec:
  hosts: {selector: {role: import}}
  baseline: {pipeline: current}
  candidate: {pipeline: process-priority-filter, vars: {collection_interval: 5s}}
  warmup: 0s
  duration: 40s
  criticalProcesses: [phx-import-crit]
"#,
        )
        .await;
    stack
        .wait_for_phase("vs-current", Phase::Completed, Duration::from_secs(300))
        .await;
    let report: ExperimentReport = stack
        .request(
            Method::GET,
            "/api/v1/experiments/vs-current/report",
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let experiment = stack.experiment("vs-current").await;
    println!(
        "experiment vs-current against the imported baseline: {:?}",
        experiment.reason
    );
    println!(
        "verdict {:?}: imported baseline {} series, candidate {} series",
        report.verdict, report.baseline.series, report.candidate.series
    );
    assert!(
        report.baseline.series > 0,
        "the imported baseline was measured"
    );
    assert!(report.candidate.series > 0);
    assert!(
        report
            .baseline
            .critical_processes
            .contains(&"phx-import-crit".to_string()),
        "the imported baseline keeps the host's processes: {:?}",
        report.baseline.critical_processes
    );
    stack.shutdown().await;
}
