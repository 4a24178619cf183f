//! The test suite's Kubernetes control plane (`phoenix_e2e::kube`: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, kwok) does what a
//! cluster does, and the agent's Node lookup (`phoenix_agent::node_labels`) works
//! against it: labels read through a ServiceAccount token, a missing Node and missing
//! RBAC reported as what they are.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, Pod, PodSpec, PodTemplateSpec, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use phoenix_agent::node_labels::{self, NodeLabelsError};
use phoenix_e2e::kube::{ControlPlane, ControlPlaneOptions, wait_until};
use tokio::sync::OnceCell;

/// One control plane for this file's tests (its processes end with the test process).
async fn plane() -> &'static ControlPlane {
    static PLANE: OnceCell<ControlPlane> = OnceCell::const_new();
    PLANE
        .get_or_init(|| async {
            ControlPlane::start(ControlPlaneOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .await
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        ..ObjectMeta::default()
    }
}

async fn create_namespace(client: &kube::Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta(name, None),
                ..Namespace::default()
            },
        )
        .await
        .expect("create namespace");
}

#[tokio::test]
async fn nodes_have_their_labels_and_a_daemon_set_gets_one_pod_per_node() {
    let plane = plane().await;
    let client = plane.client().await.unwrap();

    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let roles: BTreeMap<String, String> = nodes
        .items
        .iter()
        .map(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            (
                n.metadata.name.clone().unwrap(),
                labels.get("role").cloned().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        BTreeMap::from([
            ("node-batch".to_string(), "batch".to_string()),
            ("node-db".to_string(), "db".to_string()),
            ("node-web".to_string(), "web".to_string()),
        ])
    );

    // The controller-manager makes the Pods, the scheduler binds them.
    create_namespace(&client, "ds").await;
    let labels = BTreeMap::from([("app".to_string(), "ds-test".to_string())]);
    let ds = DaemonSet {
        metadata: meta("ds-test", Some("ds")),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        image: Some("example.invalid/none:1".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    };
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), "ds");
    daemon_sets
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ds");
    let placed = wait_until(Duration::from_secs(60), || async {
        let Ok(list) = pods.list(&ListParams::default()).await else {
            return false;
        };
        let mut on: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        on.sort();
        on == ["node-batch", "node-db", "node-web"]
    })
    .await;
    let list = pods.list(&ListParams::default()).await.unwrap();
    let placement: Vec<_> = list
        .items
        .iter()
        .map(|p| {
            (
                p.metadata.name.clone(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
            )
        })
        .collect();
    assert!(
        placed,
        "want one pod on each of the three nodes, got {placement:?}\ncontroller-manager:\n{}\nscheduler:\n{}",
        plane.log("kube-controller-manager.log"),
        plane.log("kube-scheduler.log")
    );
    let ready = wait_until(Duration::from_secs(30), || async {
        daemon_sets
            .get("ds-test")
            .await
            .ok()
            .and_then(|d| d.status)
            .is_some_and(|s| s.number_ready == 3)
    })
    .await;
    assert!(ready, "the DaemonSet did not report 3 ready pods");
}

/// A ServiceAccount in `namespace`, with `get` on nodes when `may_get_nodes`, and a
/// kubeconfig holding a token the API server issued for it.
async fn service_account_kubeconfig(
    plane: &ControlPlane,
    client: &kube::Client,
    namespace: &str,
    may_get_nodes: bool,
) -> std::path::PathBuf {
    create_namespace(client, namespace).await;
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta("agent", Some(namespace)),
                ..ServiceAccount::default()
            },
        )
        .await
        .unwrap();
    if may_get_nodes {
        let role = ClusterRole {
            metadata: meta(&format!("{namespace}-nodes"), None),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["nodes".into()]),
                verbs: vec!["get".into()],
                ..PolicyRule::default()
            }]),
            ..ClusterRole::default()
        };
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &role)
            .await
            .unwrap();
        let binding = ClusterRoleBinding {
            metadata: meta(&format!("{namespace}-nodes"), None),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: format!("{namespace}-nodes"),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "agent".into(),
                namespace: Some(namespace.into()),
                ..Subject::default()
            }]),
        };
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }
    let output = plane
        .kubectl()
        .args(["create", "token", "agent", "--namespace", namespace])
        .output()
        .expect("kubectl create token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    plane
        .kubeconfig_with_token(&format!("{namespace}-agent"), token.trim())
        .unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn the_agent_reads_its_nodes_labels_with_its_service_account() {
    let plane = plane().await;
    let admin = plane.client().await.unwrap();
    let kubeconfig = service_account_kubeconfig(plane, &admin, "labels-ok", true).await;
    let client = plane.client_for(&kubeconfig).await.unwrap();

    let found = node_labels::fetch(client.clone(), "node-web")
        .await
        .unwrap();
    assert_eq!(found["role"], "web");
    assert_eq!(found["zone"], "a");
    assert_eq!(found["kubernetes.io/hostname"], "node-web");

    let flags = labels(&[("role", "canary"), ("team", "sre")]);
    let merged = node_labels::labels_with_node(
        client.clone(),
        "node-db",
        &flags,
        node_labels::LOOKUP_TIMEOUT,
    )
    .await;
    assert_eq!(merged["role"], "canary", "the flag label wins");
    assert_eq!(merged["team"], "sre");
    assert_eq!(merged["zone"], "b", "the Node's own label");

    let err = node_labels::fetch(client.clone(), "no-such-node")
        .await
        .unwrap_err();
    assert!(matches!(err, NodeLabelsError::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Node `no-such-node` does not exist"),
        "{text}"
    );
    assert!(text.contains("spec.nodeName"), "{text}");
    let got =
        node_labels::labels_with_node(client, "no-such-node", &flags, node_labels::LOOKUP_TIMEOUT)
            .await;
    assert_eq!(got, flags, "a missing Node leaves the flag labels");
}

#[tokio::test]
async fn without_rbac_the_lookup_says_what_is_missing() {
    let plane = plane().await;
    let admin = plane.client().await.unwrap();
    let kubeconfig = service_account_kubeconfig(plane, &admin, "labels-denied", false).await;
    let client = plane.client_for(&kubeconfig).await.unwrap();

    let err = node_labels::fetch(client.clone(), "node-web")
        .await
        .unwrap_err();
    assert!(matches!(err, NodeLabelsError::Forbidden { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("needs `get` on `nodes`"), "{text}");
    assert!(
        text.contains("system:serviceaccount:labels-denied:agent"),
        "the API server's message names the account: {text}"
    );
    let flags = labels(&[("role", "web")]);
    let got =
        node_labels::labels_with_node(client, "node-web", &flags, node_labels::LOOKUP_TIMEOUT)
            .await;
    assert_eq!(got, flags);
}
