//! The Helm chart in `helm/phoenix`, rendered by a real `helm` for every value set
//! and checked against the Kubernetes API types.
//!
//! Value sets: the chart's defaults, `kind/values.yaml`, and every file in
//! `helm/phoenix/ci/` (bundled vs external database, Prometheus and Pushgateway,
//! existing Secrets, GitOps from a ConfigMap or git). For each: `helm lint --strict`,
//! `helm template`, then every rendered document is parsed into its k8s-openapi type
//! and serialized back. A key that does not survive that round trip is a field the
//! type does not have (misspelled, or at the wrong level), which the API server
//! would silently drop; the test fails on it. Then the promises the chart documents:
//! the agent DaemonSet (hostPID, read-only /hostfs, NODE_NAME from spec.nodeName),
//! RBAC (get on nodes for the agent's ServiceAccount), probes (/readyz, /healthz),
//! selectors, Secret references, and that every environment variable given to a
//! Phoenix binary is one it reads.
//!
//! `helm` comes from `helm/install-helm.sh` (a `go install`, cached once per machine),
//! so this works on a fresh machine too: the first run builds helm (minutes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolumeClaim, Pod, PodSpec, Probe, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const RELEASE: &str = "phoenix";
const NAMESPACE: &str = "phoenix";

/// Secrets the ci value sets name but expect to exist already (made outside the chart).
const EXTERNAL_SECRETS: [&str; 5] = [
    "phoenix-tokens-from-vault",
    "phoenix-db",
    "git-credentials",
    "phoenix-tokens-gitops",
    "phoenix-database-gitops",
];
/// ConfigMaps the ci value sets name but expect to exist already.
const EXTERNAL_CONFIG_MAPS: [&str; 1] = ["phoenix-experiments"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("helm/phoenix")
}

/// The helm binary: whatever `helm/install-helm.sh` prints (cached, or built now).
fn helm() -> PathBuf {
    phoenix_e2e::bins::helm()
}

/// Runs helm; its stdout on success, else its stderr.
fn run_helm(args: &[&str]) -> Result<String, String> {
    let output = Command::new(helm())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run helm");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("helm prints UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// One way of installing the chart: a name and its values files.
struct ValueSet {
    name: String,
    files: Vec<PathBuf>,
}

fn value_sets() -> Vec<ValueSet> {
    let mut sets = vec![
        ValueSet {
            name: "defaults".into(),
            files: vec![],
        },
        ValueSet {
            name: "kind/values.yaml".into(),
            files: vec![repo_root().join("kind/values.yaml")],
        },
    ];
    let mut ci: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("helm/phoenix/ci")
        .map(|entry| entry.expect("a ci entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    ci.sort();
    assert!(!ci.is_empty(), "helm/phoenix/ci has no value sets");
    for file in ci {
        let name = format!("ci/{}", file.file_name().unwrap().to_string_lossy());
        sets.push(ValueSet {
            name,
            files: vec![file],
        });
    }
    sets
}

fn values_args(set: &ValueSet) -> Vec<String> {
    set.files
        .iter()
        .flat_map(|file| ["--values".to_string(), file.display().to_string()])
        .collect()
}

/// A rendered document: the template it came from and its content.
struct Document {
    source: String,
    value: Value,
}

/// Splits `helm template` output into documents, keeping each one's `# Source:`.
fn split_documents(rendered: &str) -> Result<Vec<Document>, String> {
    let mut documents = Vec::new();
    let mut chunks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in rendered.lines() {
        if line == "---" {
            chunks.push(Vec::new());
        } else {
            chunks.last_mut().unwrap().push(line);
        }
    }
    for chunk in chunks {
        let source = chunk
            .iter()
            .find_map(|line| line.strip_prefix("# Source: "))
            .unwrap_or("(unknown template)")
            .to_string();
        let text = chunk.join("\n");
        let is_empty = chunk
            .iter()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
        if is_empty {
            continue;
        }
        let value: Value = serde_saphyr::from_str(&text)
            .map_err(|err| format!("{source}: not valid YAML: {err}\n{text}"))?;
        documents.push(Document { source, value });
    }
    Ok(documents)
}

/// Every object kind the chart renders, typed.
enum Object {
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
    ServiceAccount(ServiceAccount),
    PersistentVolumeClaim(PersistentVolumeClaim),
    Pod(Pod),
    Deployment(Deployment),
    StatefulSet(StatefulSet),
    DaemonSet(DaemonSet),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    NetworkPolicy(NetworkPolicy),
    Job(Box<Job>),
}

fn is<T: Resource>(api_version: &str, kind: &str) -> bool {
    api_version == T::API_VERSION && kind == T::KIND
}

/// Parses a document into its type, failing on anything the type does not keep.
fn parse_object(document: &Document) -> Result<Object, String> {
    let field = |name: &str| document.value.get(name).and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        return Err("has no apiVersion or kind".into());
    };
    let value = &document.value;
    if is::<ConfigMap>(api_version, kind) {
        round_trip(value).map(Object::ConfigMap)
    } else if is::<Secret>(api_version, kind) {
        round_trip(value).map(Object::Secret)
    } else if is::<Service>(api_version, kind) {
        round_trip(value).map(Object::Service)
    } else if is::<ServiceAccount>(api_version, kind) {
        round_trip(value).map(Object::ServiceAccount)
    } else if is::<PersistentVolumeClaim>(api_version, kind) {
        round_trip(value).map(Object::PersistentVolumeClaim)
    } else if is::<Pod>(api_version, kind) {
        round_trip(value).map(Object::Pod)
    } else if is::<Deployment>(api_version, kind) {
        round_trip(value).map(Object::Deployment)
    } else if is::<StatefulSet>(api_version, kind) {
        round_trip(value).map(Object::StatefulSet)
    } else if is::<DaemonSet>(api_version, kind) {
        round_trip(value).map(Object::DaemonSet)
    } else if is::<ClusterRole>(api_version, kind) {
        round_trip(value).map(Object::ClusterRole)
    } else if is::<ClusterRoleBinding>(api_version, kind) {
        round_trip(value).map(Object::ClusterRoleBinding)
    } else if is::<NetworkPolicy>(api_version, kind) {
        round_trip(value).map(Object::NetworkPolicy)
    } else if is::<Job>(api_version, kind) {
        round_trip(value).map(|j| Object::Job(Box::new(j)))
    } else {
        Err(format!(
            "{api_version} {kind} is not a kind this test knows; add it to `Object`"
        ))
    }
}

/// Deserializes `value` into `T`, serializes it back, and fails when anything in
/// `value` did not survive (the type ignores fields it does not have).
fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|err| err.to_string())?;
    let back = serde_json::to_value(&typed).expect("a typed object serializes");
    let mut lost = Vec::new();
    differences(value, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(lost.join("; "))
    }
}

/// Paths in `original` that `back` dropped or changed.
fn differences(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(original), Value::Object(back)) => {
            for (key, value) in original {
                let path = format!("{path}.{key}");
                match back.get(key) {
                    Some(back) => differences(value, back, &path, out),
                    None if value.is_null() => {
                        out.push(format!("{path} is null (give it a value or leave it out)"))
                    }
                    None => out.push(format!(
                        "{path}: unknown field, the Kubernetes type has no such field (misspelled or misplaced?)"
                    )),
                }
            }
        }
        (Value::Array(original), Value::Array(back)) if original.len() == back.len() => {
            for (index, (original, back)) in original.iter().zip(back).enumerate() {
                differences(original, back, &format!("{path}[{index}]"), out);
            }
        }
        // Quantities and int-or-strings may be written as numbers and come back as strings.
        (Value::Number(number), Value::String(text)) if number.to_string() == *text => {}
        (original, back) if original == back => {}
        (original, back) => out.push(format!("{path}: {original} came back as {back}")),
    }
}

/// A value set rendered and parsed: each object with its template and name.
struct Rendered {
    objects: Vec<(String, Object)>,
}

impl Rendered {
    fn daemon_sets(&self) -> impl Iterator<Item = &DaemonSet> {
        self.objects.iter().filter_map(|(_, object)| match object {
            Object::DaemonSet(ds) => Some(ds),
            _ => None,
        })
    }

    fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.objects.iter().find_map(|(_, object)| match object {
            Object::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(d),
            _ => None,
        })
    }

    /// Every workload's pod template: the workload's name, the pod labels, the spec.
    fn pod_specs(&self) -> Vec<(String, &BTreeMap<String, String>, &PodSpec)> {
        let mut specs = Vec::new();
        for (_, object) in &self.objects {
            let (name, template) = match object {
                Object::Deployment(d) => (&d.metadata.name, &d.spec.template),
                Object::StatefulSet(s) => (&s.metadata.name, &s.spec.template),
                Object::DaemonSet(d) => (&d.metadata.name, &d.spec.template),
                Object::Job(j) => match &j.spec {
                    Some(spec) => (&j.metadata.name, &spec.template),
                    None => continue,
                },
                _ => continue,
            };
            let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
            if let (Some(labels), Some(spec)) = (labels, template.spec.as_ref()) {
                specs.push((name.clone().unwrap_or_default(), labels, spec));
            }
        }
        specs
    }

    fn names_of(&self, wanted: fn(&Object) -> Option<&Option<String>>) -> BTreeSet<String> {
        self.objects
            .iter()
            .filter_map(|(_, object)| wanted(object).cloned().flatten())
            .collect()
    }

    fn secret_names(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .filter_map(|(_, object)| match object {
                Object::Secret(s) => s.metadata.name.clone(),
                _ => None,
            })
            .collect()
    }
}

/// Lints, renders and parses one value set; every problem is returned, not just the first.
fn render(set: &ValueSet) -> Result<Rendered, Vec<String>> {
    let chart = chart_dir().display().to_string();
    let values = values_args(set);
    let values: Vec<&str> = values.iter().map(String::as_str).collect();

    let mut lint = vec!["lint", "--strict", &chart];
    lint.extend(&values);
    if let Err(err) = run_helm(&lint) {
        return Err(vec![format!("helm lint --strict failed:\n{err}")]);
    }

    let mut template = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    template.extend(&values);
    let rendered =
        run_helm(&template).map_err(|err| vec![format!("helm template failed:\n{err}")])?;
    let documents = split_documents(&rendered).map_err(|err| vec![err])?;

    let mut problems = Vec::new();
    let mut objects = Vec::new();
    for document in &documents {
        let name = document
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(no name)");
        let kind = document
            .value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("(no kind)");
        match parse_object(document) {
            Ok(object) => objects.push((document.source.clone(), object)),
            Err(err) => problems.push(format!("{} {kind} {name}: {err}", document.source)),
        }
    }
    if problems.is_empty() {
        Ok(Rendered { objects })
    } else {
        Err(problems)
    }
}

/// A value set's name and its rendering, or every problem found on the way.
type RenderedSet = (String, Result<Rendered, Vec<String>>);

/// Renders every value set once per test process.
fn rendered_sets() -> &'static [RenderedSet] {
    static RENDERED: OnceLock<Vec<RenderedSet>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        value_sets()
            .iter()
            .map(|set| (set.name.clone(), render(set)))
            .collect()
    })
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Container> {
    spec.containers.iter().find(|c| c.name == name)
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

/// The path of an HTTP probe, after checking its port names a container port.
fn http_probe_path(
    container: &Container,
    probe: &Option<Probe>,
    what: &str,
) -> Result<String, String> {
    let http = probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .ok_or_else(|| format!("container {} has no HTTP {what}", container.name))?;
    if let IntOrString::String(port) = &http.port {
        let named = container
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some(port.as_str()));
        if !named {
            return Err(format!(
                "container {}'s {what} uses port `{port}`, which it does not declare",
                container.name
            ));
        }
    }
    Ok(http.path.clone().unwrap_or_default())
}

/// The agent DaemonSet as documented: hostPID, the node's / read-only at /hostfs,
/// NODE_NAME from the Downward API, tolerations and limits, probes on /healthz.
fn check_agent(ds: &DaemonSet, problems: &mut Vec<String>) -> Option<String> {
    let spec = ds.spec.template.spec.as_ref()?;
    let mut problem = |text: String| problems.push(format!("agent DaemonSet: {text}"));
    if spec.host_pid != Some(true) {
        problem("hostPID is not true".into());
    }
    let Some(agent) = container(spec, "agent") else {
        problem("no container named agent".into());
        return None;
    };
    let hostfs = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/hostfs");
    match hostfs {
        None => problem("nothing is mounted at /hostfs".into()),
        Some(mount) => {
            if mount.read_only != Some(true) {
                problem("/hostfs is not mounted read-only".into());
            }
            let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name);
            let host_path = volume
                .and_then(|v| v.host_path.as_ref())
                .map(|h| h.path.as_str());
            if host_path != Some("/") {
                problem(format!(
                    "/hostfs is not the node's / (hostPath {host_path:?})"
                ));
            }
        }
    }
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|from| from.field_ref.as_ref())
        .map(|field| field.field_path.as_str());
    if node_name != Some("spec.nodeName") {
        problem(format!(
            "NODE_NAME does not come from fieldRef spec.nodeName ({node_name:?})"
        ));
    }
    if env_value(agent, "PHOENIX_HOST_ID") != Some("$(NODE_NAME)") {
        problem("PHOENIX_HOST_ID is not $(NODE_NAME)".into());
    }
    if env_value(agent, "PHOENIX_HOSTFS") != Some("/hostfs") {
        problem("PHOENIX_HOSTFS is not /hostfs".into());
    }
    if let Some(state_dir) = env_value(agent, "PHOENIX_STATE_DIR") {
        let mount = agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == state_dir);
        let on_host = mount.and_then(|m| {
            spec.volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .and_then(|v| v.host_path.as_ref())
        });
        if on_host.is_none() {
            problem(format!("the state dir {state_dir} is not a hostPath mount"));
        }
    } else {
        problem("PHOENIX_STATE_DIR is not set".into());
    }
    if spec.tolerations.as_ref().is_none_or(Vec::is_empty) {
        problem("no tolerations".into());
    }
    let limits = agent.resources.as_ref().and_then(|r| r.limits.as_ref());
    if limits.is_none_or(|l| !l.contains_key("memory")) {
        problem("no memory limit".into());
    }
    match http_probe_path(agent, &agent.liveness_probe, "liveness probe") {
        Ok(path) if path == "/healthz" => {}
        Ok(path) => problem(format!("liveness probe hits {path}, not /healthz")),
        Err(err) => problem(err),
    }
    spec.service_account_name.clone()
}

/// RBAC as documented: the agent's ServiceAccount may get nodes.
fn check_rbac(rendered: &Rendered, service_account: &str, problems: &mut Vec<String>) {
    let account_exists = rendered.objects.iter().any(|(_, object)| {
        matches!(object, Object::ServiceAccount(sa) if sa.metadata.name.as_deref() == Some(service_account))
    });
    if !account_exists {
        problems.push(format!(
            "the agent's ServiceAccount {service_account} is not rendered"
        ));
    }
    let grants_get_nodes = |role_name: &str| {
        rendered.objects.iter().any(|(_, object)| match object {
            Object::ClusterRole(role) if role.metadata.name.as_deref() == Some(role_name) => {
                role.rules.iter().flatten().any(|rule| {
                    let has = |list: &Option<Vec<String>>, item: &str| {
                        list.iter().flatten().any(|x| x == item || x == "*")
                    };
                    has(&rule.api_groups, "")
                        && has(&rule.resources, "nodes")
                        && rule.verbs.iter().any(|v| v == "get" || v == "*")
                })
            }
            _ => false,
        })
    };
    let bound = rendered.objects.iter().any(|(_, object)| match object {
        Object::ClusterRoleBinding(binding) => {
            let binds_agent = binding.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == service_account
                    && s.namespace.as_deref() == Some(NAMESPACE)
            });
            binds_agent
                && binding.role_ref.kind == "ClusterRole"
                && grants_get_nodes(&binding.role_ref.name)
        }
        _ => false,
    });
    if !bound {
        problems.push(format!(
            "no ClusterRoleBinding gives ServiceAccount {NAMESPACE}/{service_account} a ClusterRole with get on nodes"
        ));
    }
}

/// The api reports ready on /readyz and alive on /healthz; the reconciler is
/// alive on /healthz and runs at least two replicas.
fn check_api_and_reconciler(rendered: &Rendered, problems: &mut Vec<String>) {
    let fullname = rendered
        .daemon_sets()
        .next()
        .and_then(|ds| ds.metadata.name.as_deref())
        .and_then(|name| name.strip_suffix("-agent"))
        .unwrap_or(RELEASE)
        .to_string();
    let probes = |deployment: &str,
                  container_name: &str,
                  readiness: &str,
                  liveness: &str,
                  problems: &mut Vec<String>| {
        let Some(d) = rendered.deployment(deployment) else {
            problems.push(format!("Deployment {deployment} is not rendered"));
            return;
        };
        let spec = d.spec.template.spec.as_ref();
        let Some(c) = spec.and_then(|s| container(s, container_name)) else {
            problems.push(format!(
                "Deployment {deployment} has no container {container_name}"
            ));
            return;
        };
        for (probe, what, want) in [
            (&c.readiness_probe, "readiness probe", readiness),
            (&c.liveness_probe, "liveness probe", liveness),
        ] {
            match http_probe_path(c, probe, what) {
                Ok(path) if path == want => {}
                Ok(path) => problems.push(format!("{deployment}: {what} hits {path}, not {want}")),
                Err(err) => problems.push(format!("{deployment}: {err}")),
            }
        }
    };
    probes(
        &format!("{fullname}-api"),
        "api",
        "/readyz",
        "/healthz",
        problems,
    );
    probes(
        &format!("{fullname}-reconciler"),
        "reconciler",
        "/healthz",
        "/healthz",
        problems,
    );
    // Settings a binary refuses to start without (outside --dev): each must be set.
    for (deployment, container_name, required) in [
        ("api", "api", &["DATABASE_URL", "PHOENIX_COLLECTOR_BIN"][..]),
        (
            "reconciler",
            "reconciler",
            &[
                "DATABASE_URL",
                "PHOENIX_REMOTE_WRITE_URL",
                "PHOENIX_PROMETHEUS_URL",
            ][..],
        ),
    ] {
        let deployment = format!("{fullname}-{deployment}");
        let c = rendered
            .deployment(&deployment)
            .and_then(|d| d.spec.template.spec.as_ref())
            .and_then(|s| container(s, container_name));
        for name in required {
            let set = c.is_some_and(|c| c.env.iter().flatten().any(|e| e.name == *name));
            if !set {
                problems.push(format!("{deployment}/{container_name}: {name} is not set"));
            }
        }
    }
    if let Some(reconciler) = rendered.deployment(&format!("{fullname}-reconciler")) {
        let replicas = reconciler.spec.replicas.unwrap_or(1);
        if replicas < 2 {
            problems.push(format!(
                "the reconciler runs {replicas} replica(s), not two or more"
            ));
        }
    }
}

/// Generic wiring: selectors select their pods, Services reach a named port,
/// Secret references point at a rendered (or knowingly external) Secret, and the
/// `helm test` pod asks the API's /healthz.
fn check_wiring(rendered: &Rendered, problems: &mut Vec<String>) {
    let pod_specs = rendered.pod_specs();
    let selects = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    for (_, object) in &rendered.objects {
        let (name, selector, template_labels) = match object {
            Object::Deployment(d) => {
                let spec = &d.spec;
                (
                    &d.metadata.name,
                    spec.selector.match_labels.as_ref(),
                    spec.template
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.as_ref()),
                )
            }
            Object::StatefulSet(s) => {
                let spec = &s.spec;
                (
                    &s.metadata.name,
                    spec.selector.match_labels.as_ref(),
                    spec.template
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.as_ref()),
                )
            }
            Object::DaemonSet(d) => {
                let spec = &d.spec;
                (
                    &d.metadata.name,
                    spec.selector.match_labels.as_ref(),
                    spec.template
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.as_ref()),
                )
            }
            _ => continue,
        };
        match (selector, template_labels) {
            (Some(selector), Some(labels)) if selects(selector, labels) => {}
            _ => problems.push(format!(
                "{name:?}: the selector does not match the pod template's labels"
            )),
        }
    }

    for (_, object) in &rendered.objects {
        let Object::Service(service) = object else {
            continue;
        };
        let name = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.as_ref().unwrap();
        let Some(selector) = spec.selector.as_ref() else {
            problems.push(format!("Service {name} has no selector"));
            continue;
        };
        let pods: Vec<_> = pod_specs
            .iter()
            .filter(|(_, labels, _)| selects(selector, labels))
            .collect();
        if pods.is_empty() {
            problems.push(format!("Service {name} selects no pods"));
        }
        for port in spec.ports.iter().flatten() {
            if let Some(IntOrString::String(target)) = &port.target_port {
                let declared = pods.iter().all(|(_, _, pod)| {
                    pod.containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .any(|p| p.name.as_deref() == Some(target.as_str()))
                });
                if !declared {
                    problems.push(format!(
                        "Service {name} targets port `{target}`, which its pods do not declare"
                    ));
                }
            }
        }
    }

    let secrets = rendered.secret_names();
    for (pod_name, _, spec) in &pod_specs {
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in containers {
            for env in c.env.iter().flatten() {
                let Some(key_ref) = env
                    .value_from
                    .as_ref()
                    .and_then(|f| f.secret_key_ref.as_ref())
                else {
                    continue;
                };
                let known = secrets.contains(&key_ref.name)
                    || EXTERNAL_SECRETS.contains(&key_ref.name.as_str());
                if !known {
                    problems.push(format!(
                        "{pod_name}/{}: {} comes from Secret {}, which is neither rendered nor a known external Secret",
                        c.name, env.name, key_ref.name
                    ));
                }
            }
        }
    }

    let config_maps = rendered.names_of(|object| match object {
        Object::ConfigMap(c) => Some(&c.metadata.name),
        _ => None,
    });
    let claims = rendered.names_of(|object| match object {
        Object::PersistentVolumeClaim(c) => Some(&c.metadata.name),
        _ => None,
    });
    for (pod_name, _, spec) in &pod_specs {
        for volume in spec.volumes.iter().flatten() {
            if let Some(config_map) = &volume.config_map {
                let name = config_map.name.as_str();
                if !config_maps.contains(name) && !EXTERNAL_CONFIG_MAPS.contains(&name) {
                    problems.push(format!(
                        "{pod_name}: volume {} mounts ConfigMap {name}, which is not rendered",
                        volume.name
                    ));
                }
            }
            if let Some(claim) = &volume.persistent_volume_claim
                && !claims.contains(&claim.claim_name)
            {
                problems.push(format!(
                    "{pod_name}: volume {} uses PersistentVolumeClaim {}, which is not rendered",
                    volume.name, claim.claim_name
                ));
            }
        }
    }

    let test_pod = rendered
        .objects
        .iter()
        .find_map(|(_, object)| match object {
            Object::Pod(pod)
                if pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("helm.sh/hook"))
                    .map(String::as_str)
                    == Some("test") =>
            {
                Some(pod)
            }
            _ => None,
        });
    match test_pod {
        None => problems.push("no `helm test` pod (annotation helm.sh/hook: test)".into()),
        Some(pod) => {
            let asks_healthz = pod.spec.as_ref().is_some_and(|spec| {
                spec.containers.iter().any(|c| {
                    c.command
                        .iter()
                        .chain(c.args.iter())
                        .flatten()
                        .any(|arg| arg.contains("-api.") && arg.ends_with("/healthz"))
                })
            });
            if !asks_healthz {
                problems.push("the `helm test` pod does not ask the API's /healthz".into());
            }
        }
    }
}

/// The workloads (by name) whose pod labels a `matchLabels` selects.
fn selected_workloads(
    rendered: &Rendered,
    selector: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    rendered
        .pod_specs()
        .into_iter()
        .filter(|(_, labels, _)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .map(|(name, _, _)| name)
        .collect()
}

/// Measurement integrity: the bundled Prometheus and Pushgateway each have a
/// NetworkPolicy admitting exactly the workloads that must reach them (Prometheus:
/// the agents, which remote-write, and the reconciler, which queries; the
/// Pushgateway: the agents, which push, and Prometheus, which scrapes), and
/// Prometheus runs without its lifecycle API (no remote shutdown or reload).
fn check_measurement_policies(rendered: &Rendered, problems: &mut Vec<String>) {
    let fullname = rendered
        .daemon_sets()
        .next()
        .and_then(|ds| ds.metadata.name.as_deref())
        .and_then(|name| name.strip_suffix("-agent"))
        .unwrap_or(RELEASE)
        .to_string();
    let workload = |component: &str| format!("{fullname}-{component}");
    let policies: Vec<&NetworkPolicy> = rendered
        .objects
        .iter()
        .filter_map(|(_, object)| match object {
            Object::NetworkPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    for (target, admitted) in [
        ("prometheus", ["agent", "reconciler"]),
        ("pushgateway", ["agent", "prometheus"]),
    ] {
        let target = workload(target);
        let Some((_, _, spec)) = rendered
            .pod_specs()
            .into_iter()
            .find(|(name, _, _)| *name == target)
        else {
            continue; // not bundled in this value set
        };
        if let Some(c) = spec.containers.first()
            && c.args
                .iter()
                .flatten()
                .any(|a| a == "--web.enable-lifecycle")
        {
            problems.push(format!("{target} runs with --web.enable-lifecycle"));
        }
        let governing: Vec<&&NetworkPolicy> = policies
            .iter()
            .filter(|p| {
                let selector = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_selector.as_ref())
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                selected_workloads(rendered, &selector).contains(&target)
            })
            .collect();
        if governing.len() != 1 {
            problems.push(format!(
                "{target} is selected by {} NetworkPolicies, want exactly one",
                governing.len()
            ));
            continue;
        }
        let mut reached_by = BTreeSet::new();
        for rule in governing[0]
            .spec
            .as_ref()
            .and_then(|s| s.ingress.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(peers) = &rule.from else {
                problems.push(format!(
                    "{target}: an ingress rule without `from` admits every pod"
                ));
                continue;
            };
            for peer in peers {
                let selector = peer
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                if selector.is_empty()
                    || peer.ip_block.is_some()
                    || peer.namespace_selector.is_some()
                {
                    problems.push(format!(
                        "{target}: a peer that is not one of Phoenix's workloads"
                    ));
                }
                reached_by.extend(selected_workloads(rendered, &selector));
            }
        }
        let wanted: BTreeSet<String> = admitted.iter().map(|c| workload(c)).collect();
        if reached_by != wanted {
            problems.push(format!(
                "{target} is reachable from {reached_by:?}, want exactly {wanted:?}"
            ));
        }
    }
}

#[test]
fn the_chart_renders_valid_kubernetes_objects_for_every_value_set() {
    let mut report = Vec::new();
    for (name, rendered) in rendered_sets() {
        let mut problems = Vec::new();
        match rendered {
            Err(errors) => problems.extend(errors.iter().cloned()),
            Ok(rendered) => {
                let agents: Vec<_> = rendered.daemon_sets().collect();
                if agents.len() != 1 {
                    problems.push(format!(
                        "{} DaemonSets rendered, want the agent's alone",
                        agents.len()
                    ));
                }
                for ds in agents {
                    match check_agent(ds, &mut problems) {
                        Some(account) => check_rbac(rendered, &account, &mut problems),
                        None => {
                            problems.push("the agent DaemonSet has no serviceAccountName".into())
                        }
                    }
                }
                check_api_and_reconciler(rendered, &mut problems);
                check_wiring(rendered, &mut problems);
                check_measurement_policies(rendered, &mut problems);
            }
        }
        for problem in problems {
            report.push(format!("[{name}] {problem}"));
        }
    }
    assert!(
        report.is_empty(),
        "the chart has {} problem(s):\n{}",
        report.len(),
        report.join("\n")
    );
}

/// `[env: NAME` entries of a binary's `--help` (of its subcommand `args`).
fn env_vars_in_help(binary: &Path, args: &[&str]) -> BTreeSet<String> {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&output.stdout);
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| *c != '=' && *c != ']')
                .collect()
        })
        .collect()
}

#[test]
fn every_environment_variable_the_chart_sets_is_read_by_its_binary() {
    // Read by something other than clap: the agent's Node lookup and tracing's filter.
    let other_readers = [phoenix_agent::node_labels::NODE_NAME_ENV, "RUST_LOG"];
    let binaries: [(&str, &str, &[&str]); 4] = [
        ("api", "phoenix-api", &[]),
        ("reconciler", "phoenix-reconciler", &[]),
        ("agent", "phoenix-agent", &[]),
        // `phoenix sync` takes the CLI's global settings and its own (logs, traces).
        ("sync", "phoenix", &["sync"]),
    ];
    let known: BTreeMap<&str, BTreeSet<String>> = binaries
        .iter()
        .map(|(container, binary, args)| {
            (
                *container,
                env_vars_in_help(&phoenix_e2e::bins::binary(binary), args),
            )
        })
        .collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (set, rendered) in rendered_sets() {
        let Ok(rendered) = rendered else { continue };
        for (pod, _, spec) in rendered.pod_specs() {
            for c in &spec.containers {
                let Some(known) = known.get(c.name.as_str()) else {
                    continue;
                };
                for env in c.env.iter().flatten() {
                    checked += 1;
                    if !known.contains(&env.name) && !other_readers.contains(&env.name.as_str()) {
                        problems.push(format!(
                            "[{set}] {pod}/{}: {} is not an environment variable its binary reads",
                            c.name, env.name
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 0, "no environment variables checked");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The value set whose sync leaves removed files' resources in place.
const SYNC_WITHOUT_PRUNE: &str = "ci/sync-existing-configmap-values.yaml";

#[test]
fn the_sync_container_runs_a_command_line_phoenix_accepts() {
    let phoenix = phoenix_e2e::bins::binary("phoenix");
    let mut checked = 0;
    for (set, rendered) in rendered_sets() {
        let Ok(rendered) = rendered else { continue };
        for (pod, _, spec) in rendered.pod_specs() {
            let Some(sync) = container(spec, "sync") else {
                continue;
            };
            checked += 1;
            let command = sync.command.clone().unwrap_or_default();
            assert_eq!(
                command.get(..2),
                Some(&["/usr/local/bin/phoenix".to_string(), "sync".to_string()][..]),
                "[{set}] {pod}: {command:?}"
            );
            assert_eq!(
                command.contains(&"--prune".to_string()),
                set != SYNC_WITHOUT_PRUNE,
                "[{set}] {pod}: sync.prune (default true) decides --prune: {command:?}"
            );
            // The real CLI parses it: one round against nothing fails on the missing
            // directory, not on the command line.
            let output = Command::new(&phoenix)
                .args(&command[1..])
                .arg("--once")
                .env("PHOENIX_API_URL", "http://127.0.0.1:1")
                .env_remove("PHOENIX_CONFIG")
                .env("HOME", "/nonexistent")
                .output()
                .expect("run phoenix sync");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success() && stderr.contains("cannot read"),
                "[{set}] {pod}: {command:?}: {stderr}"
            );
        }
    }
    assert!(checked >= 3, "only {checked} sync containers rendered");
}

#[test]
fn a_misspelled_value_is_refused_by_the_schema() {
    let chart = chart_dir().display().to_string();
    let err = run_helm(&["template", RELEASE, &chart, "--set", "api.replicaz=3"])
        .expect_err("a misspelled value key must fail");
    assert!(err.contains("replicaz"), "{err}");
    let err = run_helm(&["template", RELEASE, &chart, "--set", "sync.source=svn"])
        .expect_err("an unknown sync source must fail");
    assert!(err.contains("sync"), "{err}");
}

#[test]
fn no_database_is_a_clear_error() {
    let chart = chart_dir().display().to_string();
    let err = run_helm(&[
        "template",
        RELEASE,
        &chart,
        "--set",
        "postgres.enabled=false",
    ])
    .expect_err("no database must fail");
    assert!(err.contains("database.url"), "{err}");
    let err = run_helm(&[
        "template",
        RELEASE,
        &chart,
        "--set",
        "prometheus.enabled=false",
    ])
    .expect_err("no Prometheus must fail");
    assert!(err.contains("prometheus.remoteWriteUrl"), "{err}");
    let err = run_helm(&[
        "template",
        RELEASE,
        &chart,
        "--set",
        "prometheus.enabled=false,prometheus.remoteWriteUrl=http://p:9090/api/v1/write",
    ])
    .expect_err("no Prometheus to query must fail");
    assert!(err.contains("prometheus.url"), "{err}");
    let err = run_helm(&[
        "template",
        RELEASE,
        &chart,
        "--set",
        "pushgateway.enabled=false",
    ])
    .expect_err("no Pushgateway must fail");
    assert!(err.contains("pushgateway.url"), "{err}");
}

#[test]
fn a_gitops_render_generates_nothing() {
    // Argo CD renders with `helm template`: `lookup` sees no cluster, so anything
    // generated would change on every sync. With the documented existingSecrets,
    // two renders are the same and no Secret is rendered at all.
    let chart = chart_dir().display().to_string();
    let values = chart_dir()
        .join("ci/gitops-values.yaml")
        .display()
        .to_string();
    let args = [
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--values",
        &values,
    ];
    let first = run_helm(&args).expect("render");
    let second = run_helm(&args).expect("render again");
    assert_eq!(first, second, "two renders differ");
    let documents = split_documents(&first).expect("documents");
    let secrets: Vec<&str> = documents
        .iter()
        .filter(|d| d.value.get("kind").and_then(Value::as_str) == Some("Secret"))
        .map(|d| d.source.as_str())
        .collect();
    assert!(secrets.is_empty(), "Secrets rendered: {secrets:?}");
    // Without them, the default render does generate (tokens differ per render).
    let first = run_helm(&["template", RELEASE, &chart]).expect("render");
    let second = run_helm(&["template", RELEASE, &chart]).expect("render again");
    assert_ne!(first, second, "the defaults generate tokens");
}

#[test]
fn the_round_trip_catches_a_misspelled_field() {
    // The check itself, without helm: `readOnly` misspelled, and one at the wrong level.
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {
            "containers": [{
                "name": "c",
                "image": "i",
                "resources": {"limits": {"cpu": 2, "memory": "1Gi"}},
                "volumeMounts": [{"name": "v", "mountPath": "/v", "readOnyl": true}],
            }],
            "hostPid": true,
        },
    });
    let err = round_trip::<Pod>(&manifest).expect_err("misspellings are caught");
    assert!(
        err.contains(".spec.containers[0].volumeMounts[0].readOnyl: unknown field"),
        "{err}"
    );
    assert!(err.contains(".spec.hostPid: unknown field"), "{err}");
    assert!(!err.contains("cpu"), "a numeric quantity is fine: {err}");
}
