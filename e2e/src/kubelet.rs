//! A kubelet for tests: runs the Pods the real scheduler put on the kwok Nodes, for
//! Phoenix's own images, as real processes.
//!
//! For each scheduled Pod of the watched namespace it does what a kubelet does, with
//! the parts a test needs:
//! - the Pod gets a network namespace of its own (`ip netns`), a veth pair on a
//!   bridge and an address on it; `/etc/netns/<ns>/hosts` (which `ip netns exec`
//!   mounts over `/etc/hosts`) maps every Service of the namespace to the address of
//!   a ready Pod it selects, so pods talk by Service name (the Service port must be
//!   the container port: there is no kube-proxy);
//! - its containers run in a mount namespace whose root holds the host's system
//!   directories read-only, and of `/usr/local/bin` only the files the image's
//!   Dockerfile stage copies in (`image`); the image's `ENV`, then the container's
//!   environment (Secrets, ConfigMaps, the Downward API and `$(VAR)` resolved, plus
//!   `KUBERNETES_SERVICE_HOST`/`PORT`), its command and args (else the image's
//!   entrypoint), its user (securityContext, else the image's `USER`);
//! - volumes are directories: emptyDir, Secret, ConfigMap, hostPath (per Node:
//!   `/` is the machine's root, read-only; any other path a directory of that Node),
//!   and the ServiceAccount token from the TokenRequest API, bound to the Pod;
//! - the Pod's status (running, its IP, readiness from its HTTP readiness probe,
//!   restarts, exit codes) is written to the API server, so Deployments, the
//!   DaemonSet, `helm install --wait` and `helm test` see what really happens.
//!
//! It refuses, with a [`Problem`] naming the Pod, what a test must not let through:
//! an image that is neither Phoenix's nor one of the few the machine has (curl), and
//! an environment variable that the container's binary does not read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::image::Image;
use crate::kube::ControlPlane;

/// The bridge every pod's veth is attached to, and its address (the host side).
pub const BRIDGE: &str = "phxbr0";
pub const BRIDGE_IP: &str = "10.77.0.1";
const SUBNET_PREFIX: &str = "10.77.0";

/// Something the kubelet refused or saw fail, naming the Pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub pod: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {}: {}", self.pod, self.message)
    }
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The bridge pods hang off. Made before the control plane starts (the API server
/// listens on [`BRIDGE_IP`]); removed on drop. The bridge, its subnet and the
/// `phx<N>` namespace names are machine-wide, so one test at a time holds them: an
/// exclusive `flock` on [`NETWORK_LOCK`], taken (waiting if need be) by `create`.
pub struct PodNetwork {
    _lock: std::fs::File,
}

/// The lock that serialises pod networks on this machine.
pub const NETWORK_LOCK: &str = "/run/lock/phoenix-pod-network.lock";

impl PodNetwork {
    pub fn create() -> Result<PodNetwork, String> {
        let lock =
            std::fs::File::create(NETWORK_LOCK).map_err(|e| format!("{NETWORK_LOCK}: {e}"))?;
        // SAFETY: flock on a file descriptor this function owns; blocks until free.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        if rc != 0 {
            return Err(format!(
                "flock {NETWORK_LOCK}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // A leftover of a killed run goes first (we hold the lock: nobody uses it).
        let _ = ip(&["link", "del", BRIDGE]);
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        Ok(PodNetwork { _lock: lock })
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", BRIDGE]);
    }
}

/// Images the kubelet can run: Phoenix's (by the repository's last path segment:
/// `phoenix/api` → the Dockerfile target `api`), and images whose program the machine
/// has (`curlimages/curl`: the helm test pod).
pub struct Images {
    pub phoenix: BTreeMap<String, Image>,
}

/// Images whose programs come from the machine itself.
const HOST_IMAGES: [&str; 1] = ["curlimages/curl"];

/// A started container process: a small `sh` owner that stops it when this handle
/// goes or the test process dies (stdin closes), and exits with its exit code.
struct Process {
    child: Child,
    owner_pipe: Option<ChildStdin>,
}

/// (A background list's stdin is /dev/null unless redirected: hence fd 3.)
const OWNER: &str = r#"exec 3<&0
"$@" & pid=$!
{ read -r _ <&3; kill "$pid" 2>/dev/null; } &
wait "$pid""#;

impl Drop for Process {
    fn drop(&mut self) {
        // The owner sends SIGTERM and waits for the process, like a kubelet's stop.
        drop(self.owner_pipe.take());
        let _ = self.child.wait();
    }
}

struct RunningPod {
    uid: String,
    index: u32,
    ip: String,
    node: String,
    labels: BTreeMap<String, String>,
    process: Option<Process>,
    restarts: i32,
    started_at: String,
    last_exit: Option<i32>,
    finished: bool,
    /// Why the kubelet refused to run it, if it did.
    refused: Option<String>,
    ready: bool,
    spec: Pod,
}

impl RunningPod {
    fn netns(&self) -> String {
        format!("phx{}", self.index)
    }
}

struct State {
    pods: BTreeMap<String, RunningPod>,
    /// The status last written for each pod, so an unchanged one is not written again.
    written: BTreeMap<String, serde_json::Value>,
    problems: Vec<Problem>,
    next_index: u32,
}

/// The kubelet of all kwok Nodes for one namespace. Dropping it stops every pod and
/// removes their network namespaces.
pub struct Kubelet {
    state: Arc<Mutex<State>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    dir: PathBuf,
}

struct Context {
    client: kube::Client,
    namespace: String,
    images: Images,
    dir: PathBuf,
    ca_cert: PathBuf,
    api_port: u16,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubelet {
    /// Starts running the pods of `namespace` (checked every half second).
    pub async fn start(
        plane: &ControlPlane,
        namespace: &str,
        images: Images,
        dir: &Path,
    ) -> Result<Kubelet, String> {
        let client = plane.client().await.map_err(|e| e.to_string())?;
        let state = Arc::new(Mutex::new(State {
            pods: BTreeMap::new(),
            written: BTreeMap::new(),
            problems: Vec::new(),
            next_index: 10,
        }));
        let context = Context {
            client,
            namespace: namespace.to_string(),
            images,
            dir: dir.to_path_buf(),
            ca_cert: plane.ca_cert.clone(),
            api_port: plane.port,
            kubectl: crate::kube::binaries().join("kubectl"),
            kubeconfig: plane.kubeconfig.clone(),
        };
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    sync(&context, &state).await;
                    tokio::select! {
                        _ = stop_rx.changed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        });
        Ok(Kubelet {
            state,
            stop,
            task: Some(task),
            dir: dir.to_path_buf(),
        })
    }

    /// What was refused or failed so far.
    pub fn problems(&self) -> Vec<Problem> {
        self.state.lock().unwrap().problems.clone()
    }

    /// The log of a pod's container.
    pub fn log(&self, pod: &str, container: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .join("pods")
                .join(pod)
                .join(format!("{container}.log")),
        )
        .unwrap_or_default()
    }

    /// Pod names and their IPs, of pods running now.
    pub fn pod_ips(&self) -> BTreeMap<String, String> {
        let state = self.state.lock().unwrap();
        state
            .pods
            .iter()
            .filter(|(_, p)| p.process.is_some())
            .map(|(name, p)| (name.clone(), p.ip.clone()))
            .collect()
    }

    /// Stops the loop and every pod.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut state = self.state.lock().unwrap();
        let names: Vec<String> = state.pods.keys().cloned().collect();
        for name in names {
            if let Some(pod) = state.pods.remove(&name) {
                teardown(pod);
            }
        }
    }
}

fn teardown(mut pod: RunningPod) {
    drop(pod.process.take());
    let netns = pod.netns();
    let _ = ip(&["netns", "del", &netns]);
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{netns}"));
}

/// One round: start new pods, restart or finish exited ones, update readiness and
/// status, forget deleted ones, refresh every pod's hosts file.
async fn sync(context: &Context, state: &Arc<Mutex<State>>) {
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &context.namespace);
    let Ok(listed) = pods_api.list(&ListParams::default()).await else {
        return;
    };
    let wanted: BTreeMap<String, Pod> = listed
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name.clone()?, p)))
        .collect();

    // Deleted (or replaced under the same name): stop.
    let gone: Vec<RunningPod> = {
        let mut state = state.lock().unwrap();
        let stale: Vec<String> = state
            .pods
            .iter()
            .filter(|(name, pod)| {
                wanted.get(*name).and_then(|p| p.metadata.uid.as_ref()) != Some(&pod.uid)
            })
            .map(|(name, _)| name.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|name| {
                state.written.remove(&name);
                state.pods.remove(&name)
            })
            .collect()
    };
    for pod in gone {
        teardown(pod);
    }

    // New: set up and start.
    for (name, pod) in &wanted {
        if state.lock().unwrap().pods.contains_key(name) {
            continue;
        }
        let index = {
            let mut state = state.lock().unwrap();
            state.next_index += 1;
            state.next_index
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let mut running = RunningPod {
            uid,
            index,
            ip: format!("{SUBNET_PREFIX}.{index}"),
            node,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            process: None,
            restarts: 0,
            started_at: now(),
            last_exit: None,
            finished: false,
            refused: None,
            ready: false,
            spec: pod.clone(),
        };
        match setup_pod(context, &running).await {
            Ok(()) => match start_container(context, &running).await {
                Ok(process) => running.process = Some(process),
                Err(message) => {
                    running.finished = true;
                    record(state, name, &message);
                    running.refused = Some(message);
                }
            },
            Err(message) => {
                running.finished = true;
                record(state, name, &message);
                running.refused = Some(message);
            }
        }
        state.lock().unwrap().pods.insert(name.clone(), running);
    }

    // Exited: restart (restartPolicy Always/OnFailure) or finish.
    let names: Vec<String> = state.lock().unwrap().pods.keys().cloned().collect();
    for name in &names {
        let exited = {
            let mut state = state.lock().unwrap();
            let Some(pod) = state.pods.get_mut(name) else {
                continue;
            };
            match pod.process.as_mut().map(|p| p.child.try_wait()) {
                Some(Ok(Some(status))) => {
                    pod.process = None;
                    pod.ready = false;
                    pod.last_exit = Some(status.code().unwrap_or(128 + 9));
                    Some(status.code().unwrap_or(137))
                }
                _ => None,
            }
        };
        let Some(code) = exited else { continue };
        let (policy, restarts, container) = {
            let state = state.lock().unwrap();
            let pod = &state.pods[name];
            let spec = pod.spec.spec.as_ref().unwrap();
            (
                spec.restart_policy
                    .clone()
                    .unwrap_or_else(|| "Always".into()),
                pod.restarts,
                spec.containers[0].name.clone(),
            )
        };
        let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
        if code != 0 {
            let log = tail(
                &context
                    .dir
                    .join("pods")
                    .join(name)
                    .join(format!("{container}.log")),
                6,
            );
            record(
                state,
                name,
                &format!("container {container} exited with {code}: {log}"),
            );
        }
        if restart && restarts < 20 {
            // Back off a little, like a kubelet, then run it again.
            tokio::time::sleep(Duration::from_millis(
                500 * u64::from(restarts.unsigned_abs().min(4) + 1),
            ))
            .await;
            let snapshot = {
                let mut state = state.lock().unwrap();
                let Some(pod) = state.pods.get_mut(name) else {
                    continue;
                };
                pod.restarts += 1;
                pod.started_at = now();
                clone_for_start(pod)
            };
            if let Ok(process) = start_container(context, &snapshot).await
                && let Some(pod) = state.lock().unwrap().pods.get_mut(name)
            {
                pod.process = Some(process);
            }
        } else if let Some(pod) = state.lock().unwrap().pods.get_mut(name) {
            pod.finished = true;
        }
    }

    // Readiness, then status.
    let snapshots: Vec<(String, RunningPod)> = {
        let state = state.lock().unwrap();
        state
            .pods
            .iter()
            .map(|(n, p)| (n.clone(), clone_for_start(p)))
            .collect()
    };
    for (name, mut pod) in snapshots {
        if pod.finished {
            write(&pods_api, state, &name, final_status(&pod)).await;
            continue;
        }
        let running = state
            .lock()
            .unwrap()
            .pods
            .get(&name)
            .is_some_and(|p| p.process.is_some());
        pod.ready = running && probe_ready(&pod).await;
        if let Some(live) = state.lock().unwrap().pods.get_mut(&name) {
            live.ready = pod.ready;
        }
        pod.process = None;
        write(&pods_api, state, &name, running_status(&pod, running)).await;
    }

    // Service names → ready pods' addresses, in every pod's hosts file.
    let services: Api<Service> = Api::namespaced(context.client.clone(), &context.namespace);
    if let Ok(services) = services.list(&ListParams::default()).await {
        let state = state.lock().unwrap();
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for service in &services.items {
            let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.clone()) else {
                continue;
            };
            let backend = state
                .pods
                .values()
                .find(|p| p.ready && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)));
            if let (Some(backend), Some(name)) = (backend, service.metadata.name.as_ref()) {
                let ns = &context.namespace;
                hosts.push_str(&format!(
                    "{} {name} {name}.{ns} {name}.{ns}.svc {name}.{ns}.svc.cluster.local\n",
                    backend.ip
                ));
            }
        }
        for pod in state.pods.values() {
            let path = format!("/etc/netns/{}/hosts", pod.netns());
            // In place: `ip netns exec` bind-mounted this very file over /etc/hosts.
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
            {
                let _ = file.write_all(hosts.as_bytes());
            }
        }
    }
}

fn clone_for_start(pod: &RunningPod) -> RunningPod {
    RunningPod {
        uid: pod.uid.clone(),
        index: pod.index,
        ip: pod.ip.clone(),
        node: pod.node.clone(),
        labels: pod.labels.clone(),
        process: None,
        restarts: pod.restarts,
        started_at: pod.started_at.clone(),
        last_exit: pod.last_exit,
        finished: pod.finished,
        refused: pod.refused.clone(),
        ready: pod.ready,
        spec: pod.spec.clone(),
    }
}

fn record(state: &Arc<Mutex<State>>, pod: &str, message: &str) {
    let problem = Problem {
        pod: pod.to_string(),
        message: message.to_string(),
    };
    let mut state = state.lock().unwrap();
    if !state.problems.contains(&problem) {
        state.problems.push(problem);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The network namespace, hosts file and volume directories of a pod.
async fn setup_pod(context: &Context, pod: &RunningPod) -> Result<(), String> {
    let netns = pod.netns();
    let (host_veth, pod_veth) = (format!("phxh{}", pod.index), format!("phxc{}", pod.index));
    // Left by a run that was killed: its namespace, and the veth it held.
    let _ = ip(&["netns", "del", &netns]);
    let _ = ip(&["link", "del", &host_veth]);
    ip(&["netns", "add", &netns])?;
    ip(&[
        "link", "add", &host_veth, "type", "veth", "peer", "name", &pod_veth,
    ])?;
    ip(&["link", "set", &pod_veth, "netns", &netns])?;
    ip(&["link", "set", &host_veth, "master", BRIDGE, "up"])?;
    ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    ip(&["-n", &netns, "link", "set", &pod_veth, "name", "eth0"])?;
    ip(&[
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{}/24", pod.ip),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &netns, "route", "add", "default", "via", BRIDGE_IP])?;
    let etc = PathBuf::from(format!("/etc/netns/{netns}"));
    std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
    std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").map_err(|e| e.to_string())?;

    let name = pod.spec.metadata.name.clone().unwrap_or_default();
    let dir = context.dir.join("pods").join(&name);
    let volumes = dir.join("volumes");
    std::fs::create_dir_all(&volumes).map_err(|e| e.to_string())?;
    let spec = pod.spec.spec.as_ref().ok_or("no spec")?;
    for volume in spec.volumes.iter().flatten() {
        let path = volumes.join(&volume.name);
        if let Some(host) = &volume.host_path {
            if host.path != "/" {
                let on_node = context
                    .dir
                    .join("nodes")
                    .join(&pod.node)
                    .join(host.path.trim_start_matches('/'));
                std::fs::create_dir_all(&on_node).map_err(|e| e.to_string())?;
            }
            continue;
        }
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        if volume.empty_dir.is_some() {
            chmod(&path, 0o1777);
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let secret = Api::<Secret>::namespaced(context.client.clone(), &context.namespace)
                .get(&secret_name)
                .await
                .map_err(|e| format!("volume {}: Secret {secret_name}: {e}", volume.name))?;
            for (key, value) in secret.data.unwrap_or_default() {
                std::fs::write(path.join(key), value.0).map_err(|e| e.to_string())?;
            }
        } else if let Some(source) = &volume.config_map {
            let map = Api::<ConfigMap>::namespaced(context.client.clone(), &context.namespace)
                .get(&source.name)
                .await
                .map_err(|e| format!("volume {}: ConfigMap {}: {e}", volume.name, source.name))?;
            for (key, value) in map.data.unwrap_or_default() {
                std::fs::write(path.join(key), value).map_err(|e| e.to_string())?;
            }
        } else if volume.projected.is_some() {
            // The ServiceAccount admission plugin's `kube-api-access-*` volume: a
            // token bound to this pod (TokenRequest), the CA and the namespace.
            let account = spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into());
            let output = Command::new(&context.kubectl)
                .arg("--kubeconfig")
                .arg(&context.kubeconfig)
                .args([
                    "create",
                    "token",
                    &account,
                    "--namespace",
                    &context.namespace,
                ])
                .args(["--bound-object-kind", "Pod", "--bound-object-name", &name])
                .args(["--bound-object-uid", &pod.uid])
                .output()
                .map_err(|e| e.to_string())?;
            if !output.status.success() {
                return Err(format!(
                    "volume {}: a token for ServiceAccount {account}: {}",
                    volume.name,
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            std::fs::write(path.join("token"), output.stdout.trim_ascii())
                .map_err(|e| e.to_string())?;
            std::fs::copy(&context.ca_cert, path.join("ca.crt")).map_err(|e| e.to_string())?;
            std::fs::write(path.join("namespace"), &context.namespace)
                .map_err(|e| e.to_string())?;
            for file in ["token", "ca.crt", "namespace"] {
                chmod(&path.join(file), 0o644);
            }
        } else {
            return Err(format!(
                "volume {}: a kind the harness does not run",
                volume.name
            ));
        }
        if volume.empty_dir.is_none() {
            chmod(&path, 0o755);
        }
    }
    Ok(())
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

/// The environment variables a binary reads: the `[env: NAME` entries of its
/// `--help`, and those read outside clap.
fn env_of_binary(binary: &Path) -> BTreeSet<String> {
    let output = Command::new(binary).arg("--help").output();
    let help = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| *c != '=' && *c != ']')
                .collect()
        })
        .collect();
    for other in ["RUST_LOG", "NODE_NAME"] {
        names.insert(other.to_string());
    }
    names
}

/// Starts the pod's (first) container; init containers run first, to completion.
async fn start_container(context: &Context, pod: &RunningPod) -> Result<Process, String> {
    let spec = pod.spec.spec.as_ref().ok_or("no spec")?;
    for init in spec.init_containers.iter().flatten() {
        let mut process = spawn_container(context, pod, init).await?;
        let status = tokio::task::spawn_blocking(move || process.child.wait())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("init container {} exited with {status}", init.name));
        }
    }
    if spec.containers.len() != 1 {
        return Err("the harness runs pods of one container".into());
    }
    spawn_container(context, pod, &spec.containers[0]).await
}

async fn spawn_container(
    context: &Context,
    pod: &RunningPod,
    container: &Container,
) -> Result<Process, String> {
    let name = pod.spec.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.spec.as_ref().ok_or("no spec")?;
    let image_ref = container.image.clone().unwrap_or_default();
    let repository = image_ref
        .rsplit_once(':')
        .map_or(image_ref.as_str(), |(r, _)| r);
    let target = repository.rsplit('/').next().unwrap_or_default();
    let image = if repository.starts_with("phoenix/")
        || repository.ends_with(&format!("/phoenix/{target}"))
    {
        Some(context.images.phoenix.get(target).ok_or_else(|| {
            format!(
                "container {}: image {image_ref}: docker/Dockerfile has no target `{target}`",
                container.name
            )
        })?)
    } else if HOST_IMAGES.contains(&repository) {
        None
    } else {
        return Err(format!(
            "container {}: image {image_ref} is neither Phoenix's nor one the harness can run",
            container.name
        ));
    };

    // The environment: the image's ENV, the kubelet's service variables, the container's.
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), name.clone()),
        ("HOME".into(), "/".into()),
    ];
    if let Some(image) = image {
        env.extend(image.env.iter().cloned());
    }
    env.push(("KUBERNETES_SERVICE_HOST".into(), BRIDGE_IP.into()));
    env.push((
        "KUBERNETES_SERVICE_PORT".into(),
        context.api_port.to_string(),
    ));
    let mut own: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            expand(value, &env, &own)
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                match field.field_path.as_str() {
                    "spec.nodeName" => pod.node.clone(),
                    "metadata.name" => name.clone(),
                    "metadata.namespace" => context.namespace.clone(),
                    "status.podIP" => pod.ip.clone(),
                    other => {
                        return Err(format!(
                            "container {}: {}: fieldRef {other} is not supported",
                            container.name, var.name
                        ));
                    }
                }
            } else if let Some(key) = &from.secret_key_ref {
                let secret = Api::<Secret>::namespaced(context.client.clone(), &context.namespace)
                    .get(&key.name)
                    .await
                    .map_err(|e| {
                        format!(
                            "container {}: {} from Secret {}: {e}",
                            container.name, var.name, key.name
                        )
                    })?;
                let bytes = secret
                    .data
                    .unwrap_or_default()
                    .remove(&key.key)
                    .ok_or_else(|| {
                        format!(
                            "container {}: {}: Secret {} has no key {}",
                            container.name, var.name, key.name, key.key
                        )
                    })?;
                String::from_utf8_lossy(&bytes.0).into_owned()
            } else if let Some(key) = &from.config_map_key_ref {
                let map = Api::<ConfigMap>::namespaced(context.client.clone(), &context.namespace)
                    .get(&key.name)
                    .await
                    .map_err(|e| {
                        format!(
                            "container {}: {} from ConfigMap {}: {e}",
                            container.name, var.name, key.name
                        )
                    })?;
                map.data
                    .unwrap_or_default()
                    .remove(&key.key)
                    .ok_or_else(|| {
                        format!(
                            "container {}: {}: ConfigMap {} has no key {}",
                            container.name, var.name, key.name, key.key
                        )
                    })?
            } else {
                return Err(format!(
                    "container {}: {}: a valueFrom the harness does not resolve",
                    container.name, var.name
                ));
            }
        } else {
            String::new()
        };
        own.push((var.name.clone(), value));
    }

    let command: Vec<String> = match (&container.command, image) {
        (Some(command), _) => command.clone(),
        (None, Some(image)) => image.entrypoint.clone(),
        (None, None) => Vec::new(),
    };
    let args: Vec<String> = match (&container.args, image) {
        (Some(args), _) => args.clone(),
        (None, Some(image)) if container.command.is_none() => image.cmd.clone(),
        _ => Vec::new(),
    };
    let all_env: Vec<(String, String)> = env.iter().chain(own.iter()).cloned().collect();
    let argv: Vec<String> = command
        .iter()
        .chain(args.iter())
        .map(|a| expand(a, &all_env, &[]))
        .collect();
    let program = argv
        .first()
        .ok_or_else(|| format!("container {}: no command", container.name))?;

    // Only files the image holds: refuse a program it does not copy in, and a
    // setting its binary does not read.
    if let Some(image) = image {
        let host = image.files.get(program).ok_or_else(|| {
            format!(
                "container {}: {program} is not in image {image_ref} (docker/Dockerfile stage `{}` copies {:?})",
                container.name, image.target, image.files.keys().collect::<Vec<_>>()
            )
        })?;
        let known = env_of_binary(host);
        for (key, _) in &own {
            if !known.contains(key) {
                return Err(format!(
                    "container {}: sets {key}, which {program} does not read",
                    container.name
                ));
            }
        }
    }

    // The user: the container's, else the pod's, else the image's USER.
    let context_user = container
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user));
    let context_group = container
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_group)
        .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_group));
    let user = match (context_user, image.and_then(|i| i.user.clone())) {
        (Some(uid), _) => format!("{uid}:{}", context_group.unwrap_or(uid)),
        (None, Some(user)) => user,
        (None, None) => "0:0".into(),
    };

    let pod_dir = context.dir.join("pods").join(&name);
    let root = pod_dir.join(format!("root-{}", container.name));
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let mut script =
        String::from("set -e\nR=\"$1\"; shift\nmount -t tmpfs -o mode=755 tmpfs \"$R\"\n");
    script.push_str(
        "for d in bin sbin lib lib32 lib64 libx32 usr etc; do\n\
           if [ -L /$d ]; then ln -s \"$(readlink /$d)\" \"$R/$d\";\n\
           elif [ -d /$d ]; then mkdir -p \"$R/$d\"; mount --rbind /$d \"$R/$d\"; mount -o remount,bind,ro \"$R/$d\"; fi\n\
         done\n\
         mkdir -p \"$R/proc\" \"$R/dev\" \"$R/tmp\" \"$R/var/run\" \"$R/run\"\n\
         mount -t proc proc \"$R/proc\"\n\
         mount --rbind /dev \"$R/dev\"\n\
         chmod 1777 \"$R/tmp\"\n\
         mount -t tmpfs -o mode=755 tmpfs \"$R/usr/local/bin\"\n",
    );
    if let Some(image) = image {
        for (inside, host) in &image.files {
            let Some(dir) = Path::new(inside).parent() else {
                continue;
            };
            if dir != Path::new("/usr/local/bin") {
                return Err(format!(
                    "image {image_ref}: {inside} is outside /usr/local/bin"
                ));
            }
            script.push_str(&format!(
                "touch \"$R{inside}\"; mount --bind {} \"$R{inside}\"\n",
                shell_quote(&host.display().to_string())
            ));
        }
    }
    // Volumes.
    let volumes: BTreeMap<String, &k8s_openapi::api::core::v1::Volume> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), v))
        .collect();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes.get(&mount.name).ok_or_else(|| {
            format!(
                "container {}: mount of an unknown volume {}",
                container.name, mount.name
            )
        })?;
        let source = match &volume.host_path {
            Some(host) if host.path == "/" => PathBuf::from("/"),
            Some(host) => context
                .dir
                .join("nodes")
                .join(&pod.node)
                .join(host.path.trim_start_matches('/')),
            None => pod_dir.join("volumes").join(&mount.name),
        };
        let target = format!("$R{}", mount.mount_path);
        script.push_str(&format!(
            "mkdir -p \"{target}\"; mount --rbind {} \"{target}\"\n",
            shell_quote(&source.display().to_string())
        ));
        if mount.read_only == Some(true) {
            script.push_str(&format!("mount -o remount,bind,ro \"{target}\"\n"));
        }
    }
    script.push_str(&format!(
        "cd \"$R\"\nexec chroot --userspec={user} \"$R\" /usr/bin/env -i \"$@\"\n"
    ));

    let log_path = pod_dir.join(format!("{}.log", container.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| e.to_string())?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(OWNER)
        .arg("sh")
        .args([
            "ip",
            "netns",
            "exec",
            &pod.netns(),
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(&root);
    for (key, value) in env.iter().chain(own.iter()) {
        command.arg(format!("{key}={value}"));
    }
    command.args(&argv);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start container {}: {e}", container.name))?;
    let owner_pipe = child.stdin.take().ok_or("no stdin")?;
    Ok(Process {
        child,
        owner_pipe: Some(owner_pipe),
    })
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// `$(NAME)` references to earlier variables, as the kubelet expands them.
fn expand(value: &str, env: &[(String, String)], own: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (key, val) in env.iter().chain(own.iter()) {
        out = out.replace(&format!("$({key})"), val);
    }
    out
}

/// The container's HTTP readiness probe passes (no probe: ready once running).
async fn probe_ready(pod: &RunningPod) -> bool {
    let Some(container) = pod.spec.spec.as_ref().and_then(|s| s.containers.first()) else {
        return false;
    };
    let Some(http) = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
    else {
        return true;
    };
    let port = match &http.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => *port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or(0),
    };
    let url = format!(
        "http://{}:{port}{}",
        pod.ip,
        http.path.clone().unwrap_or_default()
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a client");
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn running_status(pod: &RunningPod, running: bool) -> serde_json::Value {
    let container = &pod.spec.spec.as_ref().unwrap().containers[0];
    let ready = if pod.ready { "True" } else { "False" };
    let state = if running {
        serde_json::json!({"running": {"startedAt": pod.started_at}})
    } else {
        serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}})
    };
    let status = serde_json::json!({
        "status": {
            "phase": "Running",
            "hostIP": BRIDGE_IP,
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": pod.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": [{
                "name": container.name,
                "image": container.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": pod.ready,
                "started": running,
                "restartCount": pod.restarts,
                "state": state,
            }],
        }
    });
    status
}

fn final_status(pod: &RunningPod) -> serde_json::Value {
    let container = &pod.spec.spec.as_ref().unwrap().containers[0];
    let base = |phase: &str, state: serde_json::Value| {
        serde_json::json!({
            "status": {
                "phase": phase,
                "hostIP": BRIDGE_IP,
                "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False"},
                ],
                "containerStatuses": [{
                    "name": container.name,
                    "image": container.image.clone().unwrap_or_default(),
                    "imageID": "",
                    "ready": false,
                    "restartCount": pod.restarts,
                    "state": state,
                }],
            }
        })
    };
    // Refused: like a kubelet with a container it cannot configure, the pod waits.
    if let Some(message) = &pod.refused {
        return base(
            "Pending",
            serde_json::json!({"waiting": {"reason": "CreateContainerConfigError", "message": message}}),
        );
    }
    let code = pod.last_exit.unwrap_or(1);
    let (phase, reason) = if code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    base(
        phase,
        serde_json::json!({"terminated": {"exitCode": code, "reason": reason}}),
    )
}

/// Writes a pod's status unless it is the one written last.
async fn write(api: &Api<Pod>, state: &Arc<Mutex<State>>, name: &str, status: serde_json::Value) {
    if state.lock().unwrap().written.get(name) == Some(&status) {
        return;
    }
    if api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .is_ok()
    {
        state
            .lock()
            .unwrap()
            .written
            .insert(name.to_string(), status);
    }
}

/// Forwards TCP connections to `listen` (an address on the bridge, which pods reach)
/// to `to` (a server on 127.0.0.1): how pods reach the test's Postgres, Prometheus
/// and Pushgateway. Stops when the returned task is aborted.
pub async fn forward(
    listen: std::net::SocketAddr,
    to: std::net::SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    Ok(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}
