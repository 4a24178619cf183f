//! `helm install`, `upgrade`, `rollback` and `uninstall` of `helm/phoenix` against a
//! real API server (`phoenix_e2e::kube`: etcd, kube-apiserver with RBAC and
//! PodSecurity admission, kube-controller-manager, kube-scheduler, three kwok Nodes).
//!
//! kwok reports the scheduled Pods running and ready here (nothing runs: the chart's
//! workloads run for real in `e2e/tests/kube_workloads.rs`). What is checked is what
//! the API server and the controllers do with the chart: every value set passes the
//! server's own validation (`kubectl apply --dry-run=server --validate=strict`), the
//! namespace labels for Pod Security that the chart's README documents admit the
//! agent (and `baseline` does not), the DaemonSet has one pod per node, the agent's
//! ServiceAccount may get Nodes and nothing more, and an upgrade from the previous
//! chart version keeps the tokens and the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Event, HostPathVolumeSource, Namespace, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec, Pod, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use phoenix_e2e::kube::{ControlPlane, ControlPlaneOptions, wait_until};

const RELEASE: &str = "phoenix";
/// The chart version before this one; `upgrade_keeps_tokens_and_database` installs it
/// from git history.
const PREVIOUS_CHART_VERSION: &str = "0.2.0";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Runs a command; its stdout, or a panic with its stderr naming what ran.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn helm(plane: &ControlPlane, namespace: &str) -> Command {
    let mut command = Command::new(phoenix_e2e::bins::helm());
    command
        .current_dir(repo_root())
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .args(["--namespace", namespace]);
    command
}

/// The settings every install here adds.
const TEST_VALUES: [&str; 2] = ["--set", "api.replicas=1"];

/// A namespace with the given labels.
async fn namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("create namespace");
    // The controller-manager gives it its `default` ServiceAccount, which pods need.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let made = wait_until(Duration::from_secs(30), || async {
        accounts.get("default").await.is_ok()
    })
    .await;
    assert!(made, "namespace {name} got no default ServiceAccount");
}

/// The Pod Security labels helm/phoenix/README.md tells users to set.
fn documented_pod_security_labels() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo_root().join("helm/phoenix/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.contains("kubectl label namespace phoenix pod-security.kubernetes.io/"))
        .expect("the README's `kubectl label namespace` line");
    let labels: Vec<(String, String)> = line
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(k, _)| k.starts_with("pod-security.kubernetes.io/"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(!labels.is_empty(), "no labels in {line}");
    labels
}

/// The user tokens of the chart's tokens Secret (what every version keeps).
fn user_tokens(mut data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    data.retain(|key, _| ["admin-token", "operator-token", "viewer-token"].contains(&key.as_str()));
    assert_eq!(data.len(), 3, "the tokens Secret lacks a user token");
    data
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, Vec<u8>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Secret {namespace}/{name}: {e}"));
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// `kubectl auth can-i VERB RESOURCE --as=<agent ServiceAccount>`.
fn agent_can(plane: &ControlPlane, namespace: &str, args: &[&str]) -> bool {
    let output = plane
        .kubectl()
        .args(["auth", "can-i"])
        .args(args)
        .arg(format!(
            "--as=system:serviceaccount:{namespace}:{RELEASE}-agent"
        ))
        .output()
        .expect("kubectl auth can-i");
    match String::from_utf8_lossy(&output.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {args:?}: {other} {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The chart as it was at `PREVIOUS_CHART_VERSION`: the newest commit whose
/// Chart.yaml says so, exported from git.
fn previous_chart(into: &Path) -> PathBuf {
    let root = repo_root();
    let commits = run(Command::new("git").current_dir(&root).args([
        "log",
        "--format=%H",
        "--",
        "helm/phoenix/Chart.yaml",
    ]));
    let wanted = format!("version: {PREVIOUS_CHART_VERSION}\n");
    let commit = commits
        .lines()
        .find(|commit| {
            let chart = run(Command::new("git")
                .current_dir(&root)
                .args(["show", &format!("{commit}:helm/phoenix/Chart.yaml")]));
            chart.contains(&wanted)
        })
        .unwrap_or_else(|| panic!("no commit has chart version {PREVIOUS_CHART_VERSION}"))
        .to_string();
    let archive = into.join("previous.tar");
    run(Command::new("git").current_dir(&root).args([
        "archive",
        "--output",
        &archive.display().to_string(),
        &commit,
        "helm/phoenix",
    ]));
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(into));
    into.join("helm/phoenix")
}

#[tokio::test]
async fn the_chart_installs_upgrades_rolls_back_and_uninstalls_on_a_real_api_server() {
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = plane.client().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // --- server-side validation of every value set --------------------------------
    namespace(&client, "validate", &[]).await;
    let mut sets: Vec<PathBuf> = vec![repo_root().join("kind/values.yaml")];
    for entry in std::fs::read_dir(repo_root().join("helm/phoenix/ci")).unwrap() {
        sets.push(entry.unwrap().path());
    }
    sets.sort();
    for values in std::iter::once(None).chain(sets.iter().map(Some)) {
        let mut template = helm(&plane, "validate");
        template.args(["template", RELEASE, "helm/phoenix"]);
        if let Some(values) = values {
            template.arg("--values").arg(values);
        }
        let manifests = scratch.path().join("manifests.yaml");
        std::fs::write(&manifests, run(&mut template)).unwrap();
        let output = plane
            .kubectl()
            .args([
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "--namespace",
                "validate",
                "-f",
            ])
            .arg(&manifests)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the API server refuses the chart rendered with {values:?}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // --- the previous chart version, installed into the documented namespace -------
    let ns = "phoenix";
    let labels = documented_pod_security_labels();
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    namespace(&client, ns, &labels).await;
    // There is no storage provisioner: a volume for the bundled Postgres' claim.
    let volume = PersistentVolume {
        metadata: ObjectMeta {
            name: Some("postgres-data".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity("8Gi".into()),
            )])),
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            host_path: Some(HostPathVolumeSource {
                path: scratch.path().join("postgres-data").display().to_string(),
                type_: None,
            }),
            storage_class_name: Some(String::new()),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    };
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    let previous = previous_chart(scratch.path());
    run(helm(&plane, ns)
        .args(["install", RELEASE])
        .arg(&previous)
        .args(TEST_VALUES));
    let tokens_before = user_tokens(secret_data(&client, ns, &format!("{RELEASE}-tokens")).await);
    let database_before = secret_data(&client, ns, &format!("{RELEASE}-database")).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = format!("data-{RELEASE}-postgres-0");
    let made = wait_until(Duration::from_secs(30), || async {
        claims.get(&claim).await.is_ok()
    })
    .await;
    assert!(made, "the bundled Postgres' claim {claim} was not made");
    let claim_uid = claims.get(&claim).await.unwrap().metadata.uid;

    // --- upgrade to this chart ------------------------------------------------------
    run(helm(&plane, ns)
        .args([
            "upgrade",
            RELEASE,
            "helm/phoenix",
            "--wait",
            "--timeout",
            "3m",
        ])
        .args(TEST_VALUES));
    let tokens_after = secret_data(&client, ns, &format!("{RELEASE}-tokens")).await;
    assert_eq!(
        user_tokens(tokens_after.clone()),
        tokens_before,
        "the upgrade changed the tokens"
    );
    // 0.3.0 replaced the shared agent token with a bootstrap token agents enroll with.
    let bootstrap = String::from_utf8(tokens_after["bootstrap-token"].clone()).unwrap();
    assert!(
        phoenix_wire::credentials::parse_token(&bootstrap).is_ok(),
        "the generated bootstrap token is malformed"
    );
    assert_eq!(
        secret_data(&client, ns, &format!("{RELEASE}-database")).await,
        database_before,
        "the upgrade changed the database password or URL"
    );
    assert_eq!(
        claims.get(&claim).await.unwrap().metadata.uid,
        claim_uid,
        "the upgrade replaced the database's volume"
    );
    // The upgrade ran this chart's schema migration hook first: a Job with
    // `phoenix-api migrate up`, which completed (and, finished, was deleted).
    let hooks = run(helm(&plane, ns).args(["get", "hooks", RELEASE]));
    assert!(hooks.contains("name: phoenix-migrate"), "{hooks}");
    assert!(hooks.contains("\"helm.sh/hook\": pre-upgrade"), "{hooks}");
    assert!(
        hooks.contains("command: [/usr/local/bin/phoenix-api, migrate, up]"),
        "{hooks}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let completed = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.involved_object.kind.as_deref() == Some("Job")
                && e.involved_object.name.as_deref() == Some("phoenix-migrate")
                && e.reason.as_deref() == Some("Completed")
        });
    assert!(completed, "no Completed event of the migration Job");
    assert!(
        Api::<Job>::namespaced(client.clone(), ns)
            .get_opt("phoenix-migrate")
            .await
            .unwrap()
            .is_none(),
        "a finished migration Job is deleted"
    );
    let reconciler_env = |d: &Deployment| -> Vec<String> {
        d.spec
            .template
            .spec
            .as_ref()
            .map(|s| {
                s.containers[0]
                    .env
                    .iter()
                    .flatten()
                    .map(|e| e.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let reconciler = deployments
        .get(&format!("{RELEASE}-reconciler"))
        .await
        .unwrap();
    assert!(
        reconciler_env(&reconciler).contains(&"PHOENIX_PROMETHEUS_URL".to_string()),
        "this chart gives the reconciler its Prometheus"
    );
    // Chart 0.3.0 added the measurement NetworkPolicies; 0.2.0 has none.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let prometheus_policy = format!("{RELEASE}-prometheus");
    assert!(
        policies
            .get_opt(&prometheus_policy)
            .await
            .unwrap()
            .is_some(),
        "this chart guards the bundled Prometheus with a NetworkPolicy"
    );

    // --- one agent per node, admitted under the documented Pod Security labels -------
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let agents = ListParams::default().labels("app.kubernetes.io/component=agent");
    let mut on: Vec<String> = pods
        .list(&agents)
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    on.sort();
    let mut nodes: Vec<String> = plane.nodes.iter().map(|n| n.name.clone()).collect();
    nodes.sort();
    assert_eq!(on, nodes, "one agent pod per node");
    let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
        .get(&format!("{RELEASE}-agent"))
        .await
        .unwrap();
    assert_eq!(ds.status.map(|s| s.number_ready), Some(3));

    // --- the agent's ServiceAccount: get Nodes, nothing more ------------------------
    for node in &nodes {
        assert!(
            agent_can(&plane, ns, &["get", &format!("nodes/{node}")]),
            "get nodes/{node}"
        );
    }
    for forbidden in [
        &["list", "nodes"][..],
        &["watch", "nodes"],
        &["update", "nodes/node-web"],
        &["patch", "nodes/node-web"],
        &["get", "secrets", "--namespace", ns],
        &["get", "secrets", "--all-namespaces"],
        &["list", "pods", "--namespace", ns],
        &["get", "configmaps", "--namespace", ns],
        &["create", "pods", "--namespace", ns],
        &["get", "nodes", "--subresource=proxy"],
        &[
            "create",
            "serviceaccounts",
            "--subresource=token",
            "--namespace",
            ns,
        ],
    ] {
        assert!(
            !agent_can(&plane, ns, forbidden),
            "the agent may {forbidden:?}"
        );
    }

    // --- rollback to the previous revision, and forward again -----------------------
    run(helm(&plane, ns).args(["rollback", RELEASE, "1", "--wait", "--timeout", "3m"]));
    let reconciler = deployments
        .get(&format!("{RELEASE}-reconciler"))
        .await
        .unwrap();
    assert!(
        reconciler_env(&reconciler).contains(&"PHOENIX_PROMETHEUS_URL".to_string()),
        "chart 0.2.0 gives the reconciler its Prometheus too"
    );
    assert!(
        policies
            .get_opt(&prometheus_policy)
            .await
            .unwrap()
            .is_none(),
        "the rollback restored revision 1 (the previous chart, without NetworkPolicies)"
    );
    assert_eq!(
        user_tokens(secret_data(&client, ns, &format!("{RELEASE}-tokens")).await),
        tokens_before,
        "the rollback changed the tokens"
    );
    run(helm(&plane, ns)
        .args([
            "upgrade",
            RELEASE,
            "helm/phoenix",
            "--wait",
            "--timeout",
            "3m",
        ])
        .args(TEST_VALUES));
    let history = run(helm(&plane, ns).args(["history", RELEASE, "--output", "json"]));
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(4), "{history}");

    // --- uninstall removes what the release made (the database's claim stays) --------
    run(helm(&plane, ns).args(["uninstall", RELEASE, "--wait", "--timeout", "2m"]));
    let gone = wait_until(Duration::from_secs(60), || async {
        pods.list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    assert!(gone, "pods left after uninstall");
    let secrets = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/instance=phoenix"))
        .await
        .unwrap();
    assert!(secrets.items.is_empty(), "Secrets left after uninstall");
    assert!(
        claims.get(&claim).await.is_ok(),
        "a StatefulSet's claim outlives it"
    );

    // --- under Pod Security `baseline` the agent is refused ---------------------------
    let strict = "phoenix-baseline";
    namespace(
        &client,
        strict,
        &[("pod-security.kubernetes.io/enforce", "baseline")],
    )
    .await;
    run(helm(&plane, strict)
        .args(["install", RELEASE, "helm/phoenix"])
        .args(TEST_VALUES)
        .args(["--set", "postgres.persistence.enabled=false"]));
    let events: Api<Event> = Api::namespaced(client.clone(), strict);
    let refused = wait_until(Duration::from_secs(60), || async {
        events.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("FailedCreate")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("PodSecurity") && m.contains("hostPID"))
            })
        })
    })
    .await;
    assert!(
        refused,
        "PodSecurity baseline did not refuse the agent pods"
    );
    let agents = pods_in(&client, strict, "app.kubernetes.io/component=agent").await;
    assert_eq!(agents, 0, "agent pods were admitted under baseline");
    assert!(
        pods_in(&client, strict, "app.kubernetes.io/component=api").await > 0,
        "the api meets baseline"
    );
}

async fn pods_in(client: &kube::Client, namespace: &str, selector: &str) -> usize {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}
