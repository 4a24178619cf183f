//! A real Kubernetes control plane for tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler from `kube/build.sh` (built once per
//! machine), and kwok giving the cluster Nodes with labels.
//!
//! Nothing is mocked. The API server authenticates with a token file (an admin in
//! `system:masters`, the controller-manager and the scheduler as their own users),
//! authorizes with RBAC, runs the default admission plugins plus `PodSecurity`, and
//! signs ServiceAccount tokens with a key made by `openssl`; its TLS certificate is
//! signed by a CA made the same way, so clients verify it (`ca_cert`). The
//! controller-manager turns DaemonSets and Deployments into Pods, the scheduler binds
//! them to Nodes. kwok keeps the Nodes Ready (heartbeats and leases); with
//! [`PodStages::Fake`] it also reports every scheduled Pod running and ready, with
//! [`PodStages::None`] Pods stay as the scheduler left them for a test to run.
//!
//! Every process is owned through a pipe (see `measurement`): dropping the
//! [`ControlPlane`] or the test dying in any way stops them all. Each listens on a
//! free port of 127.0.0.1 (the API server on `bind_address`, 127.0.0.1 unless asked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::measurement::{OwnedServer, free_port};

/// Why the control plane could not start; the message says what failed and where
/// its log is.
#[derive(Debug, thiserror::Error)]
#[error("kubernetes control plane: {0}")]
pub struct KubeError(String);

impl From<crate::measurement::MeasurementError> for KubeError {
    fn from(e: crate::measurement::MeasurementError) -> Self {
        KubeError(e.to_string())
    }
}

fn err(message: impl Into<String>) -> KubeError {
    KubeError(message.into())
}

/// The directory holding etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler, kubectl and kwok: `PHOENIX_KUBE_BIN_DIR` when set, else whatever
/// `kube/build.sh` prints (the cached build, or a fresh build of ~15 minutes with
/// progress on stderr on a machine that never built it).
pub fn binaries() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("PHOENIX_KUBE_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kube/build.sh");
        let output = Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run kube/build.sh");
        assert!(output.status.success(), "kube/build.sh failed");
        PathBuf::from(String::from_utf8(output.stdout).expect("a path").trim())
    })
    .clone()
}

/// What kwok does with Pods scheduled to its Nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodStages {
    /// Nothing: Pods stay scheduled and pending until something else runs them.
    None,
    /// Report every Pod running and ready at once (nothing runs).
    Fake,
}

/// A Node to create: its name and labels.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    pub fn new(name: &str, labels: &[(&str, &str)]) -> Self {
        NodeSpec {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// How to start the control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    pub nodes: Vec<NodeSpec>,
    pub pod_stages: PodStages,
    /// Where the API server listens (besides being reached on 127.0.0.1 when this
    /// is 0.0.0.0); its certificate is valid for this address too.
    pub bind_address: String,
    /// More IP addresses the API server's certificate must be valid for (e.g. a
    /// bridge address pods reach it by).
    pub extra_ips: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            nodes: vec![
                NodeSpec::new("node-web", &[("role", "web"), ("zone", "a")]),
                NodeSpec::new("node-db", &[("role", "db"), ("zone", "b")]),
                NodeSpec::new("node-batch", &[("role", "batch"), ("zone", "a")]),
            ],
            pod_stages: PodStages::Fake,
            bind_address: "127.0.0.1".into(),
            extra_ips: Vec::new(),
        }
    }
}

/// The annotation kwok manages Nodes by.
const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// A running control plane. Dropping it stops every process and removes its files.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`
    pub server: String,
    pub port: u16,
    /// A kubeconfig for the admin user (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The CA that signed the API server's certificate (PEM).
    pub ca_cert: PathBuf,
    pub admin_token: String,
    pub nodes: Vec<NodeSpec>,
    // Dropped in order: kwok, scheduler, controller-manager, API server, etcd; then files.
    processes: Vec<OwnedServer>,
    dir: tempfile::TempDir,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(process) = self.processes.pop() {
            drop(process);
        }
    }
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller-manager, the scheduler and kwok,
    /// creates the Nodes and waits until they are Ready.
    pub async fn start(options: ControlPlaneOptions) -> Result<ControlPlane, KubeError> {
        let bins = binaries();
        let dir = tempfile::Builder::new()
            .prefix("phoenix-kube-")
            .tempdir()
            .map_err(|e| err(format!("temporary directory: {e}")))?;
        let d = dir.path().to_path_buf();
        let started = Instant::now();

        let mut ips = vec!["127.0.0.1".to_string(), "10.96.0.1".to_string()];
        if options.bind_address != "0.0.0.0" {
            ips.push(options.bind_address.clone());
        }
        ips.extend(options.extra_ips.iter().cloned());
        make_certificates(&d, &ips)?;

        let admin_token = random_token();
        let tokens = [
            (admin_token.clone(), "admin", "\"system:masters\""),
            (random_token(), "system:kube-controller-manager", ""),
            (random_token(), "system:kube-scheduler", ""),
        ];
        let token_file: String = tokens
            .iter()
            .map(|(token, user, groups)| format!("{token},{user},{user},{groups}\n"))
            .collect();
        write(&d.join("tokens.csv"), &token_file)?;

        let (etcd_port, etcd_peer_port) = (free_port(), free_port());
        let port = free_port();
        let connect_host = if options.bind_address == "0.0.0.0" {
            "127.0.0.1".to_string()
        } else {
            options.bind_address.clone()
        };
        let server = format!("https://{connect_host}:{port}");
        let kubeconfig =
            |user: &str, token: &str| kubeconfig_yaml(&server, &d.join("ca.crt"), user, token);
        write(
            &d.join("admin.kubeconfig"),
            &kubeconfig("admin", &admin_token),
        )?;
        write(
            &d.join("controller-manager.kubeconfig"),
            &kubeconfig("system:kube-controller-manager", &tokens[1].0),
        )?;
        write(
            &d.join("scheduler.kubeconfig"),
            &kubeconfig("system:kube-scheduler", &tokens[2].0),
        )?;

        let mut processes = Vec::new();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        processes.push(OwnedServer::spawn(
            &bins.join("etcd"),
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &d.join("etcd.log"),
        )?);

        let path = |name: &str| d.join(name).display().to_string();
        processes.push(OwnedServer::spawn(
            &bins.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={}", options.bind_address),
                format!("--secure-port={port}"),
                format!("--advertise-address={connect_host}"),
                // No `kubernetes` Service endpoints (a loopback address may not be
                // one): pods are told the API server's address directly.
                "--endpoint-reconciler-type=none".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                format!("--cert-dir={}", path("apiserver-certs")),
                format!("--tls-cert-file={}", path("apiserver.crt")),
                format!("--tls-private-key-file={}", path("apiserver.key")),
                format!("--client-ca-file={}", path("ca.crt")),
                format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                "--anonymous-auth=false".into(),
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota,PodSecurity".into(),
                "--allow-privileged=true".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", path("sa.pub")),
                format!("--service-account-signing-key-file={}", path("sa.key")),
                "--profiling=false".into(),
                "--v=0".into(),
            ],
            &d.join("kube-apiserver.log"),
        )?);

        let config = Kubeconfig::read_from(d.join("admin.kubeconfig"))
            .map_err(|e| err(format!("admin kubeconfig: {e}")))?;
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .map_err(|e| err(format!("admin kubeconfig: {e}")))?;
        let client = kube::Client::try_from(config).map_err(|e| err(format!("a client: {e}")))?;

        let plane_logs = d.clone();
        let log_tail = move |name: &str| tail(&plane_logs.join(name), 30);
        let ready = wait_until(Duration::from_secs(90), || async {
            let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
            matches!(client.request_text(request).await, Ok(body) if body.trim() == "ok")
        })
        .await;
        if !ready {
            return Err(err(format!(
                "the API server did not answer /readyz ok within 90 s:\n{}\netcd:\n{}",
                log_tail("kube-apiserver.log"),
                log_tail("etcd.log")
            )));
        }

        processes.push(OwnedServer::spawn(
            &bins.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", path("controller-manager.kubeconfig")),
                format!(
                    "--authentication-kubeconfig={}",
                    path("controller-manager.kubeconfig")
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    path("controller-manager.kubeconfig")
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                format!("--cert-dir={}", path("controller-manager-certs")),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", path("sa.key")),
                format!("--root-ca-file={}", path("ca.crt")),
                "--controllers=*".into(),
                "--concurrent-daemonset-syncs=2".into(),
                "--v=0".into(),
            ],
            &d.join("kube-controller-manager.log"),
        )?);
        processes.push(OwnedServer::spawn(
            &bins.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", path("scheduler.kubeconfig")),
                format!(
                    "--authentication-kubeconfig={}",
                    path("scheduler.kubeconfig")
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    path("scheduler.kubeconfig")
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                format!("--cert-dir={}", path("scheduler-certs")),
                "--leader-elect=false".into(),
                "--v=0".into(),
            ],
            &d.join("kube-scheduler.log"),
        )?);
        write(&d.join("kwok.yaml"), &kwok_config(options.pod_stages))?;
        processes.push(OwnedServer::spawn(
            &bins.join("kwok"),
            &[
                format!("--kubeconfig={}", path("admin.kubeconfig")),
                format!("--config={}", path("kwok.yaml")),
                format!(
                    "--manage-nodes-with-annotation-selector={}={}",
                    KWOK_NODE_ANNOTATION.0, KWOK_NODE_ANNOTATION.1
                ),
                "--node-lease-duration-seconds=40".into(),
                "--cidr=10.244.0.0/16".into(),
                "--node-ip=10.243.0.1".into(),
                format!("--server-address=127.0.0.1:{}", free_port()),
            ],
            &d.join("kwok.log"),
        )?);

        let plane = ControlPlane {
            server,
            port,
            kubeconfig: d.join("admin.kubeconfig"),
            ca_cert: d.join("ca.crt"),
            admin_token,
            nodes: options.nodes.clone(),
            processes,
            dir,
        };
        let client = plane.client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        for spec in &options.nodes {
            let mut annotations = BTreeMap::new();
            annotations.insert(
                KWOK_NODE_ANNOTATION.0.to_string(),
                KWOK_NODE_ANNOTATION.1.to_string(),
            );
            let mut labels = spec.labels.clone();
            labels.insert("kubernetes.io/hostname".into(), spec.name.clone());
            labels.insert("kubernetes.io/os".into(), "linux".into());
            labels.insert("type".into(), "kwok".into());
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(spec.name.clone()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            };
            nodes
                .create(&PostParams::default(), &node)
                .await
                .map_err(|e| err(format!("creating Node {}: {e}", spec.name)))?;
        }
        let names: Vec<String> = options.nodes.iter().map(|n| n.name.clone()).collect();
        let ready = wait_until(Duration::from_secs(60), || async {
            let mut ready = 0;
            for name in &names {
                if let Ok(node) = nodes.get(name).await
                    && node_is_ready(&node)
                {
                    ready += 1;
                }
            }
            ready == names.len()
        })
        .await;
        if !ready {
            return Err(err(format!(
                "the Nodes {names:?} did not become Ready within 60 s (kwok):\n{}",
                plane.log("kwok.log")
            )));
        }
        eprintln!(
            "kubernetes control plane up at {} with {} nodes in {:.1}s (files in {})",
            plane.server,
            names.len(),
            started.elapsed().as_secs_f64(),
            plane.dir.path().display()
        );
        Ok(plane)
    }

    /// A client acting as the admin.
    pub async fn client(&self) -> Result<kube::Client, KubeError> {
        self.client_for(&self.kubeconfig).await
    }

    /// A client from a kubeconfig file.
    pub async fn client_for(&self, kubeconfig: &Path) -> Result<kube::Client, KubeError> {
        let config = Kubeconfig::read_from(kubeconfig)
            .map_err(|e| err(format!("{}: {e}", kubeconfig.display())))?;
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .map_err(|e| err(format!("{}: {e}", kubeconfig.display())))?;
        kube::Client::try_from(config).map_err(|e| err(format!("a client: {e}")))
    }

    /// Writes a kubeconfig that authenticates with `token` (e.g. a ServiceAccount's).
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> Result<PathBuf, KubeError> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        write(
            &path,
            &kubeconfig_yaml(&self.server, &self.ca_cert, name, token),
        )?;
        Ok(path)
    }

    /// The control plane's working directory (certificates, logs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of one component's log (`kube-apiserver.log`, `kwok.log`, ...).
    pub fn log(&self, name: &str) -> String {
        tail(&self.dir.path().join(name), 40)
    }

    /// A `kubectl` command with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(binaries().join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }
}

/// Whether a Node reports the condition Ready=True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Polls `check` every 200 ms until it is true (then true) or `timeout` passes
/// (then false).
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write(path: &Path, content: &str) -> Result<(), KubeError> {
    std::fs::write(path, content).map_err(|e| err(format!("{}: {e}", path.display())))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    let file = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut bytes)
    });
    file.expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kubeconfig_yaml(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: phoenix-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {user:?}\n  user:\n    token: {token}\n\
         contexts:\n- name: phoenix-test\n  context:\n    cluster: phoenix-test\n    user: {user:?}\n\
         current-context: phoenix-test\n",
        ca = ca.display()
    )
}

/// A CA, the API server's certificate (signed by it, valid for `ips` and the
/// in-cluster names) and the ServiceAccount signing key pair, all by `openssl`.
fn make_certificates(dir: &Path, ips: &[String]) -> Result<(), KubeError> {
    let mut alt_names: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    for dns in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        alt_names.push(format!("DNS:{dns}"));
    }
    write(
        &dir.join("apiserver.ext"),
        &format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
            alt_names.join(",")
        ),
    )?;
    let steps: [&[&str]; 5] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=phoenix-test-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "apiserver.crt",
            "-days",
            "2",
            "-extfile",
            "apiserver.ext",
        ],
        &["genrsa", "-out", "sa.key", "2048"],
        &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ];
    for args in steps {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| err(format!("cannot run openssl: {e}")))?;
        if !output.status.success() {
            return Err(err(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
    }
    Ok(())
}

/// kwok's configuration: its Node stages (initialize, then heartbeats with leases),
/// deleted Pods removed, and for [`PodStages::Fake`] Pods reported running and ready
/// (and, for Pods of Jobs, then succeeded).
fn kwok_config(pods: PodStages) -> String {
    let mut config = NODE_STAGES.join("---\n");
    config.push_str("---\n");
    config.push_str(POD_DELETE_STAGE);
    if pods == PodStages::Fake {
        config.push_str("---\n");
        config.push_str(POD_READY_STAGE);
        config.push_str("---\n");
        config.push_str(POD_COMPLETE_STAGE);
    }
    config
}

const NODE_STAGES: [&str; 2] = [
    include_str!("kwok/node-initialize.yaml"),
    include_str!("kwok/node-heartbeat-with-lease.yaml"),
];
/// Deleted Pods go at once (what a kubelet confirms after stopping them).
const POD_DELETE_STAGE: &str = include_str!("kwok/pod-delete.yaml");
const POD_READY_STAGE: &str = include_str!("kwok/pod-ready.yaml");
/// Pods of Jobs then succeed (the chart's migration hook Job completes).
const POD_COMPLETE_STAGE: &str = include_str!("kwok/pod-complete.yaml");
