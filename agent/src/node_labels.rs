//! Host labels from this host's Kubernetes Node.
//!
//! In a cluster the agent runs as a DaemonSet pod whose `NODE_NAME` comes from the
//! Downward API (`spec.nodeName`). At start-up it reads that Node through the
//! Kubernetes API (the pod's ServiceAccount needs `get` on `nodes`; the Helm chart's
//! ClusterRole grants it) and merges the Node's labels into the labels given with
//! `--labels`, so experiments can select hosts by the labels the cluster already
//! has (`role`, `topology.kubernetes.io/zone`, ...). A flag label wins over a Node
//! label with the same key.
//!
//! Reading the Node is best effort: not in a cluster, a missing Node, missing RBAC
//! or a slow API server are logged with what to do, and the agent goes on with the
//! flag labels alone. Labels are read once; a relabelled Node is seen when the agent
//! restarts.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use phoenix_wire::names::{self, Labels};

/// The environment variable that names this host's Node (set from the Downward API).
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// How long the Node lookup may take before the agent goes on without it.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the Node's labels could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NodeLabelsError {
    #[error("{NODE_NAME_ENV} is set but this is not a Kubernetes pod with a ServiceAccount ({0})")]
    NotInCluster(#[source] kube::config::InClusterError),
    #[error("cannot create a Kubernetes API client: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "Node `{node}` does not exist in the Kubernetes API; {NODE_NAME_ENV} should come from the Downward API field spec.nodeName"
    )]
    NotFound { node: String },
    #[error(
        "not allowed to read Node `{node}` ({message}); the agent's ServiceAccount needs `get` on `nodes` (the Helm chart's ClusterRole grants it)"
    )]
    Forbidden { node: String, message: String },
    #[error("reading Node `{node}` from the Kubernetes API failed: {source}")]
    Api {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Node `{node}` from the Kubernetes API took longer than {timeout:?}")]
    Timeout { node: String, timeout: Duration },
}

/// The labels this agent reports: the flag labels, plus its Node's labels when
/// `NODE_NAME` is set and the Node can be read. Never fails: a lookup that does not
/// work is logged and the flag labels are used as they are.
pub async fn host_labels(flag_labels: &Labels) -> Labels {
    let node = match std::env::var(NODE_NAME_ENV) {
        Ok(node) if !node.trim().is_empty() => node.trim().to_string(),
        _ => return flag_labels.clone(),
    };
    let client = match in_cluster_client() {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!("not using Node labels: {err}; reporting the --labels only");
            return flag_labels.clone();
        }
    };
    labels_with_node(client, &node, flag_labels, LOOKUP_TIMEOUT).await
}

/// Reads Node `node` through `client` and merges its labels under the flag labels;
/// on any error logs it and returns the flag labels.
pub async fn labels_with_node(
    client: Client,
    node: &str,
    flag_labels: &Labels,
    timeout: Duration,
) -> Labels {
    let fetched = match tokio::time::timeout(timeout, fetch(client, node)).await {
        Ok(fetched) => fetched,
        Err(_) => Err(NodeLabelsError::Timeout {
            node: node.to_string(),
            timeout,
        }),
    };
    match fetched {
        Ok(node_labels) => {
            let labels = merge(node_labels, flag_labels);
            tracing::info!(
                node,
                labels = labels.len(),
                "host labels include the Node's labels"
            );
            labels
        }
        Err(err) => {
            tracing::warn!("not using Node labels: {err}; reporting the --labels only");
            flag_labels.clone()
        }
    }
}

/// A client for the cluster this pod runs in (service account token and CA from
/// the standard in-pod paths, API server from `KUBERNETES_SERVICE_HOST`).
fn in_cluster_client() -> Result<Client, NodeLabelsError> {
    let config = kube::Config::incluster().map_err(NodeLabelsError::NotInCluster)?;
    Client::try_from(config).map_err(NodeLabelsError::Client)
}

/// The labels of Node `node` (`GET /api/v1/nodes/<node>`).
pub async fn fetch(client: Client, node: &str) -> Result<Labels, NodeLabelsError> {
    let nodes: Api<Node> = Api::all(client);
    match nodes.get(node).await {
        Ok(found) => Ok(found.metadata.labels.unwrap_or_default()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Err(NodeLabelsError::NotFound {
            node: node.to_string(),
        }),
        Err(kube::Error::Api(status)) if status.is_forbidden() => Err(NodeLabelsError::Forbidden {
            node: node.to_string(),
            message: status.message.clone(),
        }),
        Err(source) => Err(NodeLabelsError::Api {
            node: node.to_string(),
            source,
        }),
    }
}

/// The Node's labels with the flag labels on top (a flag label wins on the same
/// key). A Node label Phoenix would not accept is left out with a warning rather
/// than making the API refuse the whole status report.
pub fn merge(node_labels: Labels, flag_labels: &Labels) -> Labels {
    let mut labels = Labels::new();
    for (key, value) in node_labels {
        let checked = names::check_label_key(&key).and_then(|()| names::check_label_value(&value));
        match checked {
            Ok(()) => {
                labels.insert(key, value);
            }
            Err(reason) => tracing::warn!("skipping Node label {key}={value}: {reason}"),
        }
    }
    labels.extend(flag_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

#[cfg(test)]
mod tests {
    //! The lookup against a real API server (found, merged, missing Node, missing
    //! RBAC) is in `e2e/tests/kube_cluster.rs`, which starts one.

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn a_silent_api_server_times_out_to_the_flag_labels() {
        // A real socket that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let flags = labels(&[("role", "web")]);
        let got = labels_with_node(client, "worker-1", &flags, Duration::from_millis(200)).await;
        assert_eq!(got, flags);
    }

    #[tokio::test]
    async fn an_https_client_can_be_built() {
        // In a pod the API server speaks HTTPS. Building the client picks rustls'
        // crypto provider, which fails at run time when the build enables none, or
        // two, of them; this catches a dependency change that does that.
        let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        Client::try_from(config).expect("an HTTPS client");
    }

    #[test]
    fn labels_phoenix_would_refuse_are_skipped() {
        let node = labels(&[("role", "web"), ("bad key", "x"), ("ok", "not ok!")]);
        assert_eq!(merge(node, &Labels::new()), labels(&[("role", "web")]));
    }
}
