//! The chart's workloads, run for real: `helm install` on a real control plane
//! (`phoenix_e2e::kube`), whose scheduled Pods the test kubelet (`phoenix_e2e::kubelet`)
//! runs as processes in network namespaces, from the images `docker/Dockerfile`
//! defines. Three kwok Nodes with different labels get one agent each; the agents
//! read their Node's labels from the API server with their ServiceAccount token; the
//! example experiment (`examples/`) runs through the chart's wiring to the verdict
//! PASS, and `helm test` passes.
//!
//! Postgres, Prometheus and the Pushgateway are the test's own (throwaway Postgres,
//! Debian's Prometheus and Pushgateway), given to the chart as external services on
//! the pods' bridge. Then two ways to break it must fail the checks, naming the pod
//! and the setting: an environment variable the api does not read, and the agent's
//! ServiceAccount without `get` on nodes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use phoenix_e2e::harness::fresh_database;
use phoenix_e2e::kube::{ControlPlane, ControlPlaneOptions, NodeSpec, PodStages, wait_until};
use phoenix_e2e::kubelet::{self, BRIDGE_IP, Images, Kubelet, PodNetwork};
use phoenix_e2e::measurement::MeasurementStack;
use serde_json::Value;

const RELEASE: &str = "phoenix";
const NS: &str = "phoenix";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn helm(plane: &ControlPlane) -> Command {
    let mut command = Command::new(phoenix_e2e::bins::helm());
    command
        .current_dir(repo_root())
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .args(["--namespace", NS]);
    command
}

/// Runs a command: Ok(stdout), or Err(stdout and stderr).
fn run(command: &mut Command) -> Result<String, String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A forwarder on the bridge to a server on 127.0.0.1, and its address for the pods.
async fn on_bridge(url: &str) -> (tokio::task::JoinHandle<()>, SocketAddr) {
    let target: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("a 127.0.0.1 address");
    let listen: SocketAddr = format!("{BRIDGE_IP}:{}", target.port()).parse().unwrap();
    let task = kubelet::forward(listen, target).await.expect("forward");
    (task, listen)
}

/// Every agent pod's host reports its Node's labels; else the problems, naming pod,
/// node and (from the agent's log) why.
async fn node_label_problems(
    client: &kube::Client,
    kubelet: &Kubelet,
    api: &str,
    token: &str,
) -> Vec<String> {
    let hosts: Value = reqwest::Client::new()
        .get(format!("{api}/api/v1/hosts"))
        .bearer_auth(token)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("list hosts")
        .json()
        .await
        .expect("hosts JSON");
    let by_id: BTreeMap<String, Value> = hosts["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h["hostId"].as_str()?.to_string(), h["labels"].clone())))
        .collect();
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels("app.kubernetes.io/component=agent"))
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut problems = Vec::new();
    for pod in pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        let node_labels = nodes
            .get(&node)
            .await
            .ok()
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default();
        let reported = by_id.get(&node).cloned().unwrap_or(Value::Null);
        let missing: Vec<String> = ["role", "zone"]
            .iter()
            .filter(|key| {
                reported.get(**key).and_then(Value::as_str)
                    != node_labels.get(**key).map(String::as_str)
            })
            .map(|key| {
                format!(
                    "{key}={}",
                    node_labels.get(*key).cloned().unwrap_or_default()
                )
            })
            .collect();
        if !missing.is_empty() {
            let log = kubelet.log(&name, "agent");
            let why = log
                .lines()
                .find(|l| l.contains("Node labels"))
                .unwrap_or("(no word on Node labels in its log)");
            problems.push(format!(
                "pod {name} on node {node}: its host reports {reported} without the Node's {missing:?}: {why}"
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_runs_the_example_experiment_to_a_verdict() {
    let scratch = tempfile::tempdir().unwrap();
    let _network = PodNetwork::create().unwrap_or_else(|e| panic!("the pod network: {e}"));
    let plane = ControlPlane::start(ControlPlaneOptions {
        nodes: vec![
            NodeSpec::new("node-web", &[("role", "web"), ("zone", "a")]),
            NodeSpec::new("node-db", &[("role", "db"), ("zone", "b")]),
            NodeSpec::new("node-batch", &[("role", "batch"), ("zone", "a")]),
        ],
        pod_stages: PodStages::None,
        bind_address: BRIDGE_IP.into(),
        extra_ips: Vec::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let client = plane.client().await.unwrap();

    // The test's own Postgres, Prometheus and Pushgateway, reachable from the pods.
    let database = fresh_database().await;
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .unwrap();
    let (db_host, db_rest) = database
        .trim_start_matches("postgres://")
        .split_once('@')
        .map(|(user, rest)| (user.to_string(), rest.to_string()))
        .unwrap();
    let (db_addr, db_name) = db_rest.split_once('/').unwrap();
    let (_db_forward, db_listen) = on_bridge(db_addr).await;
    let (_prom_forward, prom_listen) = on_bridge(&measurement.prometheus_url).await;
    let (_push_forward, push_listen) = on_bridge(&measurement.pushgateway_url).await;

    let images = Images {
        phoenix: phoenix_e2e::image::phoenix_images().unwrap_or_else(|e| panic!("{e}")),
    };
    let kubelet = Kubelet::start(&plane, NS, images, scratch.path())
        .await
        .unwrap();

    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NS.into()),
                    labels: Some(BTreeMap::from([(
                        "pod-security.kubernetes.io/enforce".to_string(),
                        "privileged".to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap();

    let values = [
        "postgres.enabled=false".to_string(),
        format!("database.url=postgres://{db_host}@{db_listen}/{db_name}"),
        "prometheus.enabled=false".into(),
        format!("prometheus.remoteWriteUrl=http://{prom_listen}/api/v1/write"),
        format!("prometheus.url=http://{prom_listen}"),
        "pushgateway.enabled=false".into(),
        format!("pushgateway.url=http://{push_listen}"),
        "api.replicas=1".into(),
        "reconciler.resyncInterval=2s".into(),
        "reconciler.cpuRateWindow=10s".into(),
        "reconciler.sampleStep=2s".into(),
        "reconciler.analysisDelay=5s".into(),
        "agent.pushInterval=1s".into(),
        "agent.heartbeatInterval=2s".into(),
    ];
    let install = run(helm(&plane)
        .args([
            "install",
            RELEASE,
            "helm/phoenix",
            "--wait",
            "--timeout",
            "4m",
        ])
        .args(values.iter().flat_map(|v| ["--set".to_string(), v.clone()])));
    assert!(
        install.is_ok(),
        "{}\nthe kubelet saw:\n{}",
        install.unwrap_err(),
        kubelet
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        kubelet.problems().is_empty(),
        "the kubelet saw: {:?}",
        kubelet.problems()
    );

    let test = run(helm(&plane).args(["test", RELEASE, "--timeout", "2m"]));
    assert!(test.is_ok(), "helm test: {}", test.unwrap_err());

    // The API, by its pod's address; the operator token from the chart's Secret.
    let api_pod = kubelet
        .pod_ips()
        .into_iter()
        .find(|(name, _)| name.starts_with(&format!("{RELEASE}-api-")))
        .expect("an api pod");
    let api = format!("http://{}:8080", api_pod.1);
    let tokens = Api::<Secret>::namespaced(client.clone(), NS)
        .get(&format!("{RELEASE}-tokens"))
        .await
        .unwrap()
        .data
        .unwrap();
    let operator = String::from_utf8(tokens["operator-token"].0.clone()).unwrap();

    // Three hosts, each with its Node's labels, read by the agent from the API server.
    let all_there = wait_until(Duration::from_secs(60), || async {
        node_label_problems(&client, &kubelet, &api, &operator)
            .await
            .is_empty()
    })
    .await;
    assert!(
        all_there,
        "{:?}",
        node_label_problems(&client, &kubelet, &api, &operator).await
    );

    // The example experiment, applied with the CLI, to its verdict.
    let apply = run(Command::new(phoenix_e2e::bins::binary("phoenix"))
        .current_dir(repo_root())
        .args(["apply", "-f", "examples/"])
        .env("PHOENIX_API_URL", &api)
        .env("PHOENIX_TOKEN", &operator));
    assert!(apply.is_ok(), "{}", apply.unwrap_err());
    let http = reqwest::Client::new();
    let phase = || async {
        http.get(format!("{api}/api/v1/experiments/topk-web"))
            .bearer_auth(&operator)
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["phase"].as_str().map(str::to_string))
    };
    let ended = wait_until(Duration::from_secs(360), || async {
        matches!(
            phase().await.as_deref(),
            Some("completed" | "failed" | "stopped")
        )
    })
    .await;
    let events = http
        .get(format!("{api}/api/v1/experiments/topk-web/events"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        ended,
        "no verdict in 6 minutes: {:?}\n{events}",
        phase().await
    );
    assert_eq!(phase().await.as_deref(), Some("completed"), "{events}");
    let report: Value = http
        .get(format!("{api}/api/v1/experiments/topk-web/report"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["verdict"], "pass", "{report:#}");
    eprintln!("verdict: {}", report["verdict"]);

    // --- a setting the api does not read fails, naming pod and setting ------------
    let bad = run(helm(&plane)
        .args(["upgrade", RELEASE, "helm/phoenix", "--reuse-values"])
        .args(["--set", "api.extraEnv[0].name=PHOENIX_NOT_A_SETTING"])
        .args(["--set-string", "api.extraEnv[0].value=yes"]));
    assert!(bad.is_ok(), "{}", bad.unwrap_err());
    let refused = wait_until(Duration::from_secs(60), || async {
        kubelet.problems().iter().any(|p| {
            p.pod.starts_with(&format!("{RELEASE}-api-"))
                && p.message.contains("PHOENIX_NOT_A_SETTING")
        })
    })
    .await;
    assert!(refused, "not refused: {:?}", kubelet.problems());

    // --- an agent without `get` on nodes fails, naming the pod and the permission ---
    let roles: Api<ClusterRole> = Api::all(client.clone());
    roles
        .patch(
            &format!("{RELEASE}-agent"),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"rules": []})),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app.kubernetes.io/component=agent"),
        )
        .await
        .unwrap();
    let broken = wait_until(Duration::from_secs(90), || async {
        let problems = node_label_problems(&client, &kubelet, &api, &operator).await;
        problems.len() == 3 && problems.iter().all(|p| p.contains("get` on `nodes`"))
    })
    .await;
    let problems = node_label_problems(&client, &kubelet, &api, &operator).await;
    assert!(broken, "{problems:#?}");
    eprintln!("without nodes/get: {}", problems[0]);

    kubelet.stop().await;
}
