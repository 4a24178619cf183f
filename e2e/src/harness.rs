//! A real Phoenix stack for one test: a fresh database on a real Postgres, the real
//! api on a loopback port, the real reconciler, and agent processes.
//!
//! Postgres: `DATABASE_URL` when set (its server hosts the test databases), else
//! one throwaway cluster per test process, started on first use and removed when
//! the process exits. Every [`Stack`] gets a database of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::throwaway::ThrowawayPostgres;
use phoenix_api::ApiConfig;
use phoenix_reconciler::ReconcilerConfig;
use phoenix_storage::PgPool;
use phoenix_wire::duration::HumanDuration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bins::binary;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const OPERATOR_TOKEN: &str = "operator-token-for-tests";
pub const VIEWER_TOKEN: &str = "viewer-token-for-tests";
/// The bootstrap token every test api accepts and every test agent enrolls with.
pub const BOOTSTRAP_TOKEN: &str =
    "phoenix-bootstrap.0123456789ab.bootstrap-token-for-tests-0123456789abcdefg";

/// The user tokens every test api accepts.
pub fn user_tokens() -> phoenix_api::http::auth::TokenSet {
    format!("admin:{ADMIN_TOKEN},operator:{OPERATOR_TOKEN},viewer:{VIEWER_TOKEN}")
        .parse()
        .expect("tokens")
}

/// A file holding [`BOOTSTRAP_TOKEN`], for `--bootstrap-token-file` (one per test
/// process).
pub fn bootstrap_token_file() -> PathBuf {
    static FILE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = FILE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("bootstrap-token"), BOOTSTRAP_TOKEN)
            .expect("bootstrap token file");
        dir
    });
    dir.path().join("bootstrap-token")
}

/// A test api's settings: development defaults, this database, the test tokens.
pub fn api_config(database_url: &str) -> ApiConfig {
    let mut config = ApiConfig::new(database_url.to_string(), user_tokens());
    config.bootstrap_token_file = Some(bootstrap_token_file());
    config
}

/// Enrolls `host_id` at the api at `api_url` with [`BOOTSTRAP_TOKEN`] and returns
/// its host credential (what an agent does on its first start).
pub async fn enroll(http: &reqwest::Client, api_url: &str, host_id: &str) -> String {
    let response = http
        .post(format!("{api_url}/agent/v1/enroll"))
        .bearer_auth(BOOTSTRAP_TOKEN)
        .json(&serde_json::json!({ "host_id": host_id }))
        .send()
        .await
        .expect("enroll request");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 201, "enrolling {host_id}: {body}");
    let enrollment: phoenix_wire::credentials::Enrollment =
        serde_json::from_str(&body).expect("enrollment");
    enrollment.credential
}

/// The URL of the server's maintenance database, on which test databases are made.
fn admin_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    static CLUSTER: OnceLock<ThrowawayPostgres> = OnceLock::new();
    CLUSTER
        .get_or_init(|| ThrowawayPostgres::start().expect("start a throwaway Postgres"))
        .url("postgres")
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = tokio::task::spawn_blocking(admin_url)
        .await
        .expect("admin url");
    fresh_database_on(&admin).await
}

/// Creates an empty database on the server of `admin` (a maintenance database's
/// URL) and returns its URL.
pub async fn fresh_database_on(admin: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let admin = admin.to_string();
    let name = format!(
        "phoenix_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let pool = phoenix_storage::connect(&admin, 1)
        .await
        .expect("connect to the test server");
    // The name is made here of a fixed prefix and numbers.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create database");
    pool.close().await;
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("DATABASE_URL {admin} has no database part"),
    }
}

/// Settings of a test stack, fast enough for tests.
pub struct StackOptions {
    pub deploy_timeout: Duration,
    pub resync: Duration,
    pub task_lease: Duration,
    /// Start a reconciler (off for benchmarks of the api alone, where it would
    /// cancel the hand-written tasks nobody desires).
    pub reconciler: bool,
    /// Where experiment collectors remote-write (a [`crate::measurement::MeasurementStack`]).
    pub remote_write_url: Option<String>,
    /// The collector the api validates configs with (none: no such check).
    pub collector_bin: Option<PathBuf>,
    /// The Prometheus the analyzer queries (none: a closed port, so analysis fails).
    pub prometheus_url: Option<String>,
    /// How long analysis may keep failing before the experiment fails.
    pub analysis_timeout: Duration,
    /// How long one Prometheus query may take.
    pub prometheus_timeout: Duration,
    /// How long after the window the analyzer waits for late samples (remote
    /// write from a busy collector can lag by seconds on a loaded machine).
    pub analysis_delay: Duration,
    /// Serve the api over HTTPS with this certificate (see [`TestCa`]).
    pub tls: Option<TestCa>,
    /// A host silent for longer than this shows as lost.
    pub host_grace: Duration,
    /// Event streams the api serves at once.
    pub max_event_streams: usize,
    /// Run on this existing database (e.g. one a backup was restored into)
    /// instead of a fresh one.
    pub database_url: Option<String>,
    /// The server to make the stack's database on (a maintenance database's URL,
    /// e.g. of a [`ThrowawayPostgres`] a fault test stops); none: the shared one.
    pub postgres: Option<String>,
    /// Where the api listens (say a test network namespace's host-side address,
    /// for agents inside it); none: a free loopback port.
    pub api_bind: Option<String>,
}

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost,
/// made with the machine's `openssl` in a temporary directory.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("CA dir");
        let path = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=phoenix test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=phoenix-api",
        ]);
        std::fs::write(
            path("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TestCa {
            ca_cert: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            _dir: std::sync::Arc::new(dir),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for TestCa {
    fn clone(&self) -> Self {
        TestCa {
            ca_cert: self.ca_cert.clone(),
            server_cert: self.server_cert.clone(),
            server_key: self.server_key.clone(),
            _dir: self._dir.clone(),
        }
    }
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            deploy_timeout: Duration::from_secs(60),
            resync: Duration::from_secs(1),
            task_lease: Duration::from_secs(60),
            reconciler: true,
            remote_write_url: None,
            collector_bin: None,
            prometheus_url: None,
            analysis_timeout: Duration::from_secs(60),
            prometheus_timeout: Duration::from_secs(30),
            analysis_delay: Duration::from_secs(5),
            tls: None,
            host_grace: Duration::from_secs(60),
            max_event_streams: 1000,
            database_url: None,
            postgres: None,
            api_bind: None,
        }
    }
}

/// The api and the reconciler, in this process, on a fresh database.
pub struct Stack {
    pub api_url: String,
    pub database_url: String,
    pub pool: PgPool,
    pub http: reqwest::Client,
    pub reconciler_config: ReconcilerConfig,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Credentials of the hosts enrolled through [`Stack::host_credential`].
    credentials: std::sync::Mutex<BTreeMap<String, String>>,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Stack {
        let database_url = match (options.database_url.clone(), &options.postgres) {
            (Some(url), _) => url,
            (None, Some(admin)) => fresh_database_on(admin).await,
            (None, None) => fresh_database().await,
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut api_config = api_config(&database_url);
        api_config.task_lease = HumanDuration(options.task_lease);
        api_config.collector_bin = options.collector_bin;
        api_config.heartbeat_flush = HumanDuration(Duration::from_millis(200));
        let mut http = http_client();
        let mut scheme = "http";
        if let Some(tls) = &options.tls {
            api_config.tls_cert = Some(tls.server_cert.clone());
            api_config.tls_key = Some(tls.server_key.clone());
            let pem = std::fs::read(&tls.ca_cert).expect("CA file");
            let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("CA PEM");
            http = http_client_builder()
                .tls_certs_only(certs)
                .build()
                .expect("https client");
            scheme = "https";
        }
        api_config.host_grace = HumanDuration(options.host_grace);
        api_config.max_event_streams = options.max_event_streams;
        let listener =
            tokio::net::TcpListener::bind(options.api_bind.as_deref().unwrap_or("127.0.0.1:0"))
                .await
                .expect("bind api");
        let api_url = format!("{scheme}://{}", listener.local_addr().expect("api address"));
        let api = tokio::spawn({
            let stop_rx = stop_rx.clone();
            async move {
                phoenix_api::serve(api_config, listener, stop_rx)
                    .await
                    .expect("api runs")
            }
        });
        let mut reconciler_config = ReconcilerConfig::new(database_url.clone());
        reconciler_config.deploy_timeout = HumanDuration(options.deploy_timeout);
        if let Some(url) = options.remote_write_url {
            reconciler_config.remote_write_url = url;
        }
        let has_prometheus = options.prometheus_url.is_some();
        // Port 1 refuses connections: without a Prometheus, analysis cannot succeed.
        reconciler_config.prometheus_url = options
            .prometheus_url
            .unwrap_or_else(|| "http://127.0.0.1:1".into());
        // Roll-outs count a new collector's series for a few seconds when there is a
        // Prometheus to count them in, and judge by health alone otherwise.
        reconciler_config.rollout_series_window = HumanDuration(if has_prometheus {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        });
        reconciler_config.rollout_interval = HumanDuration(Duration::from_secs(1));
        reconciler_config.analysis_timeout = HumanDuration(options.analysis_timeout);
        reconciler_config.prometheus_timeout = HumanDuration(options.prometheus_timeout);
        // Test measurements are pushed and scraped every second. A CPU rate over 10 s
        // resolves a light collector (over 5 s it is mostly 0 ticks) and leaves a 1-minute
        // experiment 25 samples a host, 5 separate windows.
        reconciler_config.cpu_rate_window = HumanDuration(Duration::from_secs(10));
        reconciler_config.sample_step = HumanDuration(Duration::from_secs(2));
        // Test collectors scrape every 2–5 s: 20 s is several consecutive scrapes.
        reconciler_config.early_stop_after = HumanDuration(Duration::from_secs(20));
        reconciler_config.analysis_delay = HumanDuration(options.analysis_delay);
        reconciler_config.resync_interval = HumanDuration(options.resync);
        reconciler_config.standby_retry = HumanDuration(Duration::from_millis(200));
        let mut stack = Stack {
            api_url,
            pool: phoenix_storage::connect(&database_url, 4)
                .await
                .expect("test pool"),
            database_url,
            http,
            reconciler_config,
            stop,
            tasks: vec![api],
            credentials: Default::default(),
        };
        stack.wait_ready().await;
        if options.reconciler {
            stack.spawn_reconciler();
        }
        stack
    }

    /// Starts one more reconciler replica in this process.
    pub fn spawn_reconciler(&mut self) {
        self.spawn_reconciler_with(phoenix_reconciler::metrics::Metrics::new());
    }

    /// Starts one more reconciler replica in this process, recording into `metrics`
    /// (which the test may read).
    pub fn spawn_reconciler_with(&mut self, metrics: phoenix_reconciler::metrics::Metrics) {
        let config = self.reconciler_config.clone();
        let stop_rx = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            phoenix_reconciler::run(config, metrics, stop_rx)
                .await
                .expect("reconciler runs")
        }));
    }

    /// Starts a second api replica in this process on the same database (same
    /// tokens; no collector validation) and returns its base URL once it is ready.
    /// It stops with the stack.
    pub async fn spawn_api_replica(&mut self) -> String {
        let config = api_config(&self.database_url);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind api replica");
        let url = format!("http://{}", listener.local_addr().expect("replica address"));
        let stop_rx = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            phoenix_api::serve(config, listener, stop_rx)
                .await
                .expect("api replica runs")
        }));
        wait_until_ready(&self.http, &url).await;
        url
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.api_url))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "api did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_url)
    }

    /// A request with a bearer token.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// The credential of `host_id`, enrolled on first use (as its agent would) and
    /// remembered for the stack's life. A real agent for the same host would be
    /// refused enrollment, so a test uses this only for hosts without an agent.
    pub async fn host_credential(&self, host_id: &str) -> String {
        if let Some(credential) = self.credentials.lock().unwrap().get(host_id) {
            return credential.clone();
        }
        let credential = enroll(&self.http, &self.api_url, host_id).await;
        self.credentials
            .lock()
            .unwrap()
            .insert(host_id.to_string(), credential.clone());
        credential
    }

    /// Registers a host through the agent protocol, without an agent behind it.
    pub async fn register_host(&self, host_id: &str, labels: &[(&str, &str)]) {
        // Plain JSON: what a minimal agent sends; later protocol fields default.
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let status =
            serde_json::json!({ "labels": labels, "agentVersion": "test", "collectors": [] });
        let credential = self.host_credential(host_id).await;
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("/agent/v1/hosts/{host_id}/status"),
                &credential,
            )
            .json(&status)
            .send()
            .await
            .expect("status request");
        assert_eq!(response.status(), 204, "registering {host_id}");
    }

    /// The host `host_id` as users see it (`GET /api/v1/hosts`), if it is registered.
    pub async fn host(&self, host_id: &str) -> Option<phoenix_wire::view::Host> {
        let response = self
            .request(reqwest::Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
            .send()
            .await
            .ok()?;
        let hosts: phoenix_wire::view::List<phoenix_wire::view::Host> =
            response.json().await.ok()?;
        hosts.items.into_iter().find(|h| h.host_id == host_id)
    }

    /// Waits (30 s at most) until `host_id` is registered: its agent's first
    /// status report arrived.
    pub async fn wait_for_host(&self, host_id: &str) -> phoenix_wire::view::Host {
        eventually(
            &format!("host {host_id} to register"),
            Duration::from_secs(30),
            || self.host(host_id),
        )
        .await
    }

    /// Creates an experiment from a YAML document, as an operator; panics on failure.
    pub async fn create_experiment(&self, yaml: &str) -> phoenix_wire::view::Experiment {
        let response = self
            .request(reqwest::Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .expect("create request");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(status, 201, "create failed: {text}");
        serde_json::from_str(&text).expect("experiment json")
    }

    pub async fn experiment(&self, name: &str) -> phoenix_wire::view::Experiment {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/experiments/{name}"),
                VIEWER_TOKEN,
            )
            .send()
            .await
            .expect("get experiment");
        assert!(
            response.status().is_success(),
            "get {name}: {}",
            response.status()
        );
        response.json().await.expect("experiment json")
    }

    /// Polls until the experiment reaches `phase`; panics with its events if it
    /// lands in another terminal phase or time runs out.
    pub async fn wait_for_phase(
        &self,
        name: &str,
        phase: phoenix_wire::view::Phase,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let experiment = self.experiment(name).await;
            if experiment.phase == phase {
                return;
            }
            if experiment.phase.is_terminal() || Instant::now() > deadline {
                panic!(
                    "experiment {name} is {} ({:?}), waited for {phase}",
                    experiment.phase,
                    experiment.reason.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the api and every reconciler, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Polls `{url}/readyz` until it answers 2xx (30 s at most).
async fn wait_until_ready(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "api at {url} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `phoenix-agent` process with its own state directory, supervising
/// `stand-in-collector` (or another collector binary).
pub struct AgentProcess {
    pub host_id: String,
    pub labels: BTreeMap<String, String>,
    pub state_dir: PathBuf,
    /// The api it talks to; change it between a kill and a start to move it.
    pub api_url: String,
    /// More environment for the agent process (e.g. `PHOENIX_AGENT_PROTOCOL`).
    pub env: Vec<(String, String)>,
    collector_bin: PathBuf,
    pushgateway_url: Option<String>,
    ca_file: Option<PathBuf>,
    /// The network namespace the agent runs in (see [`crate::netns`]); none: this one.
    netns: Option<String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    pub fn spawn(api_url: &str, host_id: &str, labels: &[(&str, &str)]) -> AgentProcess {
        Self::spawn_with_collector(api_url, host_id, labels, &binary("stand-in-collector"))
    }

    pub fn spawn_with_collector(
        api_url: &str,
        host_id: &str,
        labels: &[(&str, &str)],
        collector: &Path,
    ) -> AgentProcess {
        Self::spawn_with(api_url, host_id, labels, collector, None)
    }

    /// An agent running `collector`, pushing resource use to `pushgateway_url` if given.
    pub fn spawn_with(
        api_url: &str,
        host_id: &str,
        labels: &[(&str, &str)],
        collector: &Path,
        pushgateway_url: Option<&str>,
    ) -> AgentProcess {
        Self::spawn_full(api_url, host_id, labels, collector, pushgateway_url, None)
    }

    /// An agent of an https:// api whose certificate `ca_file` signed.
    pub fn spawn_with_ca(
        api_url: &str,
        host_id: &str,
        labels: &[(&str, &str)],
        ca_file: &Path,
    ) -> AgentProcess {
        let collector = binary("stand-in-collector");
        Self::spawn_full(api_url, host_id, labels, &collector, None, Some(ca_file))
    }

    /// An agent not started yet (say, to mount something on its state directory
    /// first); [`Self::start`] starts it.
    pub fn unstarted(api_url: &str, host_id: &str, labels: &[(&str, &str)]) -> AgentProcess {
        let collector = binary("stand-in-collector");
        Self::new(api_url, host_id, labels, &collector, None, None)
    }

    /// An agent of another host: it runs in network namespace `netns` (made by
    /// [`crate::netns::NetNs`]), reaching the api at `api_url` over that link.
    pub fn spawn_in_netns(
        api_url: &str,
        host_id: &str,
        labels: &[(&str, &str)],
        netns: &str,
    ) -> AgentProcess {
        let collector = binary("stand-in-collector");
        let mut agent = Self::new(api_url, host_id, labels, &collector, None, None);
        agent.netns = Some(netns.to_string());
        agent.start();
        agent
    }

    fn spawn_full(
        api_url: &str,
        host_id: &str,
        labels: &[(&str, &str)],
        collector: &Path,
        pushgateway_url: Option<&str>,
        ca_file: Option<&Path>,
    ) -> AgentProcess {
        let mut agent = Self::new(
            api_url,
            host_id,
            labels,
            collector,
            pushgateway_url,
            ca_file,
        );
        agent.start();
        agent
    }

    fn new(
        api_url: &str,
        host_id: &str,
        labels: &[(&str, &str)],
        collector: &Path,
        pushgateway_url: Option<&str>,
        ca_file: Option<&Path>,
    ) -> AgentProcess {
        let dir = tempfile::Builder::new()
            .prefix("phoenix-agent-")
            .tempdir()
            .expect("agent state dir");
        AgentProcess {
            host_id: host_id.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state_dir: dir.path().canonicalize().expect("canonical state dir"),
            api_url: api_url.to_string(),
            env: Vec::new(),
            collector_bin: collector.to_path_buf(),
            pushgateway_url: pushgateway_url.map(str::to_string),
            ca_file: ca_file.map(Path::to_path_buf),
            netns: None,
            child: None,
            _dir: dir,
        }
    }

    /// Starts the agent process (again, after a kill).
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "agent {} already running",
            self.host_id
        );
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.join("agent.log"))
            .expect("agent log");
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", netns])
                    .arg(binary("phoenix-agent"));
                command
            }
            None => Command::new(binary("phoenix-agent")),
        };
        // Development mode: a test agent may run without a Pushgateway.
        command.arg("--dev");
        if let Some(url) = &self.pushgateway_url {
            command
                .arg("--pushgateway-url")
                .arg(url)
                .arg("--push-interval")
                .arg("1s");
        }
        if let Some(ca_file) = &self.ca_file {
            command.arg("--ca-file").arg(ca_file);
        }
        let child = command
            .arg("--api-url")
            .arg(&self.api_url)
            .arg("--bootstrap-token-file")
            .arg(bootstrap_token_file())
            .arg("--host-id")
            .arg(&self.host_id)
            .arg("--labels")
            .arg(labels.join(","))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--collector-bin")
            .arg(&self.collector_bin)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--heartbeat-interval")
            .arg("1s")
            .arg("--credentials-dir")
            .arg(self.credentials_dir())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn phoenix-agent");
        self.child = Some(child);
    }

    /// Where this agent reads destination credentials given by file (inside its
    /// state directory's parent temp dir; made on first use).
    pub fn credentials_dir(&self) -> PathBuf {
        let dir = self._dir.path().join("credentials");
        std::fs::create_dir_all(&dir).expect("credentials dir");
        dir
    }

    /// The agent process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent process with SIGKILL, leaving its collectors running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default()
    }

    /// Live collector processes this agent owns, from the OS process table: every
    /// process whose environment carries this agent's state directory.
    /// The pids of its collectors, sorted.
    pub fn collector_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.collector_processes().iter().map(|p| p.pid).collect();
        pids.sort();
        pids
    }

    pub fn collector_processes(&self) -> Vec<CollectorProcess> {
        collector_processes_of(&self.state_dir)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        for process in self.collector_processes() {
            // SAFETY: plain kill(2) on a pid we found in /proc.
            unsafe { libc::kill(process.pid as i32, libc::SIGKILL) };
        }
        // Load workers die with their agent; these are any that did not.
        for process in self.load_processes() {
            // SAFETY: plain kill(2) on a pid we found in /proc.
            unsafe { libc::kill(process.pid as i32, libc::SIGKILL) };
        }
    }
}

impl AgentProcess {
    /// Live load workers of this agent, from the OS process table: every process
    /// whose environment carries this agent's load marker.
    pub fn load_processes(&self) -> Vec<LoadProcess> {
        load_processes_of(&self.state_dir)
    }
}

/// A load worker (or a run's group leader) found in /proc.
#[derive(Clone, Debug)]
pub struct LoadProcess {
    pub pid: u32,
    /// Its `--run`, e.g. `run.demo`.
    pub run: String,
    /// Its `--tag`, unique per worker; a run's group leader ends in `-group`.
    pub tag: String,
    pub cmdline: Vec<String>,
}

impl LoadProcess {
    pub fn is_group_leader(&self) -> bool {
        self.tag.ends_with("-group")
    }
}

/// Live (not zombie) processes whose environment has
/// `PHOENIX_LOAD_STATE_DIR=<state_dir>`.
pub fn load_processes_of(state_dir: &Path) -> Vec<LoadProcess> {
    let marker = format!("PHOENIX_LOAD_STATE_DIR={}", state_dir.display());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            continue;
        }
        if is_zombie(pid) {
            continue;
        }
        let cmdline: Vec<String> = std::fs::read(entry.path().join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let flag = |name: &str| {
            cmdline
                .iter()
                .position(|a| a == name)
                .and_then(|i| cmdline.get(i + 1))
                .cloned()
                .unwrap_or_default()
        };
        found.push(LoadProcess {
            pid,
            run: flag("--run"),
            tag: flag("--tag"),
            cmdline,
        });
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// True when `pid` is a zombie (exited, not yet reaped) or gone.
pub fn is_zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .is_none_or(|rest| rest.trim_start().starts_with(['Z', 'X']) || rest.is_empty())
}

/// How many live (not zombie) processes the OS process table holds.
pub fn live_process_count() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| !is_zombie(pid))
        .count()
}

/// A collector process found in /proc.
#[derive(Clone, Debug)]
pub struct CollectorProcess {
    pub pid: u32,
    /// The `--config` file it was started with.
    pub config_path: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl CollectorProcess {
    /// The config the process was started with: its `--config` file, or empty
    /// when that file was rewritten well after the process started (an update in
    /// progress: the agent writes the new config, then replaces the process).
    pub fn config(&self) -> String {
        let Ok(modified) = std::fs::metadata(&self.config_path).and_then(|m| m.modified()) else {
            return String::new();
        };
        match process_start(self.pid) {
            Some(started) if modified > started + Duration::from_secs(1) => String::new(),
            _ => std::fs::read_to_string(&self.config_path).unwrap_or_default(),
        }
    }
}

/// When a process started (to the clock tick), from /proc.
fn process_start(pid: u32) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the command's closing parenthesis.
    let ticks: u64 = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(
        std::time::UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(ticks * 1000 / per_second.max(1)),
    )
}

/// Live processes whose environment has `PHOENIX_AGENT_STATE_DIR=<state_dir>`.
pub fn collector_processes_of(state_dir: &Path) -> Vec<CollectorProcess> {
    let marker = format!("PHOENIX_AGENT_STATE_DIR={}", state_dir.display());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if !vars.iter().any(|v| v == &marker) {
            continue;
        }
        // A zombie has an empty environ; anything here is alive.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let config_path = args
            .iter()
            .find_map(|a| a.strip_prefix("--config=").map(PathBuf::from))
            .or_else(|| {
                args.iter()
                    .position(|a| a == "--config")
                    .and_then(|i| args.get(i + 1))
                    .map(PathBuf::from)
            })
            .unwrap_or_default();
        let env = vars
            .iter()
            .filter_map(|v| v.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        found.push(CollectorProcess {
            pid,
            config_path,
            env,
        });
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Idle processes with a chosen executable name (a copy of `/bin/sleep`), for tests
/// that need processes a pipeline must keep or drop by name. Killed on drop.
pub struct NamedProcesses {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl NamedProcesses {
    pub fn start(name: &str, n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let exe = dir.path().join(name);
        std::fs::copy("/bin/sleep", &exe).expect("copy /bin/sleep");
        let children = (0..n)
            .map(|_| Command::new(&exe).arg("3600").spawn().expect("spawn"))
            .collect();
        Self {
            children,
            _dir: dir,
        }
    }
}

impl NamedProcesses {
    /// The processes' ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for NamedProcesses {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain reqwest client, after making ring the process's rustls crypto provider
/// (reqwest is built without one; see the workspace Cargo.toml).
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("an HTTP client with rustls and ring always builds")
}

/// What [`http_client`] is built from: its requests name this build's agent
/// protocol version (`phoenix-agent-protocol`), as a real agent's do, so tests may
/// speak the agent protocol with it; user routes ignore the header.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        phoenix_wire::agent::PROTOCOL_HEADER,
        phoenix_wire::agent::AGENT_PROTOCOL
            .to_string()
            .parse()
            .expect("a version is a header value"),
    );
    reqwest::Client::builder().default_headers(headers)
}
