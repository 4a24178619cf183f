//! A staged roll-out across six hosts, end to end, with real parts: seven agents
//! running the real collector, a real Prometheus counting each new collector's
//! series, and a second collector as the user's backend.
//!
//! Deployment `web` (six hosts, `rollout: {maxUnavailable: 2}`) gets a second
//! revision that adds the destination `backend`, whose credential is a file in each
//! agent's credentials directory. Host web-4 lacks that file (its Secret was never
//! mounted there), so its new collector cannot start. The roll-out moves web-1 and
//! web-2 (healthy, writing series), then web-3 and web-4; web-4 fails, the
//! roll-out stops there and `web` goes back to revision 1 on every host; web-5 and
//! web-6 never get revision 2 (no task, nothing at the backend). Deployment `db`
//! on another host is untouched. The reconciler is stopped in the middle of the
//! first batch and a new one carries on from what Postgres holds. The events show each step in order, the API view
//! and `phoenix deployment describe|get -o json` show where it stopped and why, and
//! a bad `maxUnavailable` is a 422 naming the field with nothing stored. `web` is
//! owned by a GitOps source: applying the failed spec again is held (unchanged,
//! with the reason), so a sync does not roll the same failure out every round.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use phoenix_e2e::backend::{OtlpBackend, TOKEN_HEADER};
use phoenix_e2e::bins::{self, binary};
use phoenix_e2e::harness::{
    ADMIN_TOKEN, AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::agent::{CollectorStatus, Health};
use phoenix_wire::apply::{Action, PlanEntry};
use phoenix_wire::deployment::PipelineDeployment;
use phoenix_wire::problem::Problem;
use phoenix_wire::rollout::{HostRollout, RolloutEvent, RolloutState};
use phoenix_wire::view::List;
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(180);
const WEB: [&str; 6] = ["web-1", "web-2", "web-3", "web-4", "web-5", "web-6"];

async fn send(stack: &Stack, method: Method, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut request = stack.request(method, path, token);
    if !body.is_empty() {
        request = request
            .header("content-type", "application/yaml")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn deployment_yaml(name: &str, role: &str, interval: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: {role}}}}}
  pipeline: process-baseline
  vars: {{collection_interval: {interval}}}
{extra}"#
    )
}

async fn deployment(stack: &Stack, name: &str) -> PipelineDeployment {
    let (status, body) = send(
        stack,
        Method::GET,
        &format!("/api/v1/deployments/{name}"),
        VIEWER_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn events(stack: &Stack, name: &str) -> Vec<RolloutEvent> {
    let (status, body) = send(
        stack,
        Method::GET,
        &format!("/api/v1/deployments/{name}/events"),
        VIEWER_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<List<RolloutEvent>>(&body)
        .unwrap()
        .items
}

/// A reconciler run by the test, stopped and started at will.
struct Reconciler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reconciler {
    fn start(stack: &Stack) -> Reconciler {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let config = stack.reconciler_config.clone();
        let task = tokio::spawn(async move {
            let metrics = phoenix_reconciler::metrics::Metrics::new();
            phoenix_reconciler::run(config, metrics, stopped)
                .await
                .expect("reconciler runs")
        });
        Reconciler { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("reconciler stops");
    }
}

/// `phoenix apply` of one document from the GitOps source `git`: the plan.
async fn apply(stack: &Stack, yaml: &str) -> Vec<PlanEntry> {
    let (status, body) = send(
        stack,
        Method::POST,
        "/api/v1/apply?source=git",
        OPERATOR_TOKEN,
        yaml,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Each host's standing collector of `name`, once all of `hosts` report it healthy.
async fn healthy_everywhere(
    stack: &Stack,
    name: &str,
    hosts: &[&str],
) -> BTreeMap<String, CollectorStatus> {
    eventually(
        &format!("{name}'s collector healthy on {hosts:?}"),
        WAIT,
        || async {
            let d = deployment(stack, name).await;
            let collectors: BTreeMap<String, CollectorStatus> = d
                .hosts
                .iter()
                .filter_map(|h| Some((h.host_id.clone(), h.collector.clone()?)))
                .filter(|(_, c)| c.health == Health::Healthy)
                .collect();
            let done = d.rollout.as_ref().is_some_and(|r| !r.state.is_open());
            (done && hosts.iter().all(|h| collectors.contains_key(*h))).then_some(collectors)
        },
    )
    .await
}

/// The distinct config hashes Phoenix ever asked `host` to run for `unit`.
async fn hashes_asked(stack: &Stack, host: &str, unit: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT spec_hash FROM agent_tasks WHERE host_id = $1 AND unit_id = $2 \
         AND action <> 'stop' GROUP BY spec_hash ORDER BY min(id)",
    )
    .bind(host)
    .bind(unit)
    .fetch_all(&stack.pool)
    .await
    .unwrap()
}

fn phoenix(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix");
    assert!(
        out.status.success(),
        "phoenix {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_failing_in_the_second_batch_stops_the_rollout_and_rolls_back_only_that_deployment()
{
    let collector = bins::collector();
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .expect("prometheus and pushgateway");
    let backend = OtlpBackend::start(&collector).expect("the backend collector");
    let mut stack = Stack::start_with(StackOptions {
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        collector_bin: Some(collector.clone()),
        deploy_timeout: Duration::from_secs(120),
        reconciler: false,
        ..Default::default()
    })
    .await;
    // Series are counted 10 s after a new collector is healthy (it scrapes every 2 s).
    stack.reconciler_config.rollout_series_window =
        phoenix_wire::duration::HumanDuration(Duration::from_secs(10));
    // A reconciler of our own, so that it can be restarted in the middle.
    let mut reconciler = Reconciler::start(&stack);

    let mut agents = Vec::new();
    for host in WEB.iter().chain(&["db-1"]) {
        let role = if host.starts_with("web") { "web" } else { "db" };
        let agent = AgentProcess::spawn_with(
            &stack.api_url,
            host,
            &[("role", role)],
            &collector,
            Some(&measurement.pushgateway_url),
        );
        if *host != "web-4" {
            let dir = agent.credentials_dir().join("backend");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("token"), "Bearer rollout-test-token\n").unwrap();
        }
        agents.push(agent);
    }
    eventually("seven registered hosts", WAIT, || async {
        let list: List<serde_json::Value> = stack
            .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (list.items.len() == 7).then_some(())
    })
    .await;

    let destination = format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Destination
metadata: {{name: backend}}
spec:
  protocol: otlp_grpc
  endpoint: "{}"
  tls: {{insecure: true}}
  credentials:
    - {{header: {TOKEN_HEADER}, file: backend/token}}
"#,
        backend.endpoint
    );
    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/destinations",
        ADMIN_TOKEN,
        &destination,
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // db by hand; web from git (`phoenix apply`/`phoenix sync` send this).
    let rollout = "  rollout: {maxUnavailable: 2}\n";
    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/deployments",
        OPERATOR_TOKEN,
        &deployment_yaml("db", "db", "2s", ""),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let plan = apply(&stack, &deployment_yaml("web", "web", "2s", rollout)).await;
    assert_eq!(plan[0].action, Action::Create, "{plan:?}");
    // A first revision replaces nothing: every host at once, each watched.
    let db_before = healthy_everywhere(&stack, "db", &["db-1"]).await;
    let web_before = healthy_everywhere(&stack, "web", &WEB).await;
    let first = deployment(&stack, "web").await;
    assert_eq!(first.revision, 1);
    assert_eq!(
        first.rollout.as_ref().unwrap().state,
        RolloutState::Done,
        "{:#?}\n{:#?}",
        first.rollout,
        events(&stack, "web").await
    );

    // maxUnavailable must move at least one host: a 422 naming it, nothing stored.
    let revision_2 = deployment_yaml(
        "web",
        "web",
        "2s",
        &format!("{rollout}  destinations: [backend]\n"),
    );
    for bad in ["0", "\"0%\"", "\"150%\"", "two"] {
        let (status, body) = send(
            &stack,
            Method::POST,
            "/api/v1/deployments",
            OPERATOR_TOKEN,
            &revision_2.replace("maxUnavailable: 2", &format!("maxUnavailable: {bad}")),
        )
        .await;
        assert_eq!(status, 422, "{bad}: {body}");
        let problem: Problem = serde_json::from_str(&body).unwrap();
        assert_eq!(
            problem.field.as_deref(),
            Some("spec.rollout.maxUnavailable"),
            "{body}"
        );
        assert!(
            problem
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("maxUnavailable"),
            "{body}"
        );
    }
    assert_eq!(
        deployment(&stack, "web").await.revision,
        1,
        "nothing stored"
    );

    // Revision 2, committed to git, exports to the backend too; web-4 cannot read
    // the credential.
    let plan = apply(&stack, &revision_2).await;
    assert_eq!(plan[0].action, Action::Update, "{plan:?}");

    // The reconciler stops in the middle of the first batch (web-1 healthy, its
    // series being counted) and a new one carries on from Postgres.
    eventually("web-1 healthy in the first batch", WAIT, || async {
        let r = deployment(&stack, "web").await.rollout?;
        (r.revision == 2 && r.hosts.get("web-1")?.state == HostRollout::Healthy).then_some(())
    })
    .await;
    reconciler.stop().await;
    let paused = deployment(&stack, "web").await.rollout.unwrap();
    assert_eq!((paused.revision, paused.batch), (2, 1), "{paused:#?}");
    reconciler = Reconciler::start(&stack);
    let stopped = eventually("the roll-out of revision 2 to end", WAIT, || async {
        let d = deployment(&stack, "web").await;
        let r = d.rollout.clone()?;
        (r.revision == 2 && !r.state.is_open()).then_some(d)
    })
    .await;
    let r = stopped.rollout.clone().unwrap();
    assert_eq!(r.state, RolloutState::RolledBack, "{r:#?}");
    assert_eq!(stopped.revision, 1, "back on revision 1");
    assert_eq!(r.batch, 2, "stopped at the second batch: {r:#?}");
    for host in ["web-1", "web-2"] {
        assert_eq!(r.hosts[host].batch, 1, "{r:#?}");
        assert_eq!(r.hosts[host].state, HostRollout::Done, "{r:#?}");
    }
    assert_eq!(r.hosts["web-3"].batch, 2, "{r:#?}");
    assert_eq!(r.hosts["web-4"].batch, 2, "{r:#?}");
    assert_eq!(r.hosts["web-4"].state, HostRollout::Failed, "{r:#?}");
    let why = r.hosts["web-4"].reason.clone().unwrap();
    assert!(why.contains("cannot read credential"), "{why}");
    assert!(
        !r.reached("web-5") && !r.reached("web-6"),
        "the third batch never started: {r:#?}"
    );
    let reason = r.reason.clone().unwrap();
    assert!(
        reason.contains("host web-4 failed") && reason.contains("rolled back to revision 1"),
        "{reason}"
    );

    // Each step, in order.
    let steps: Vec<(i64, String, Option<u32>, Option<String>)> = events(&stack, "web")
        .await
        .into_iter()
        .filter(|e| e.revision == 2)
        .map(|e| (e.revision, e.step, e.batch, e.host))
        .collect();
    let mut expected = vec![
        (2, "batch-started".to_string(), Some(1), None),
        (2, "host-healthy".into(), Some(1), Some("web-1".to_string())),
        (2, "host-healthy".into(), Some(1), Some("web-2".to_string())),
        (2, "batch-done".into(), Some(1), None),
        (2, "batch-started".into(), Some(2), None),
    ];
    // web-3 may have become healthy (with series) before web-4 failed, or not.
    let web3_healthy = (2, "host-healthy".into(), Some(2), Some("web-3".to_string()));
    if steps.contains(&web3_healthy) {
        expected.push(web3_healthy);
    }
    expected.push((2, "host-failed".into(), Some(2), Some("web-4".to_string())));
    expected.push((2, "rolled-back".into(), Some(2), None));
    assert_eq!(steps, expected);
    let all = events(&stack, "web").await;
    let started = all
        .iter()
        .find(|e| e.revision == 2 && e.step == "batch-started")
        .unwrap();
    assert!(
        started
            .reason
            .contains("web-1, web-2 move to revision 2 from revision 1"),
        "{}",
        started.reason
    );
    let failed = all.iter().find(|e| e.step == "host-failed").unwrap();
    assert!(
        failed.reason.contains("web-4") && failed.reason.contains("cannot read credential"),
        "{}",
        failed.reason
    );

    // Every web host runs revision 1 again (web-1..3 were moved back), healthy.
    eventually("revision 1 on every web host again", WAIT, || async {
        let d = deployment(&stack, "web").await;
        let back = d.hosts.iter().all(|h| {
            h.collector.as_ref().is_some_and(|c| {
                c.health == Health::Healthy && c.config_hash == web_before[&h.host_id].config_hash
            })
        });
        (back && d.hosts.len() == 6).then_some(())
    })
    .await;
    for host in ["web-1", "web-2", "web-3"] {
        let asked = hashes_asked(&stack, host, "web.standing").await;
        assert_eq!(asked.len(), 2, "{host}: revision 1, then 2: {asked:?}");
        assert_eq!(asked[0], web_before[host].config_hash);
    }
    for host in ["web-5", "web-6"] {
        assert_eq!(
            hashes_asked(&stack, host, "web.standing").await,
            vec![web_before[host].config_hash.clone()],
            "{host} was never asked to run revision 2"
        );
    }
    // Only the hosts revision 2 ran on exported to the backend.
    let received = backend.received();
    let senders = received.values("phoenix.host");
    for host in ["web-1", "web-2"] {
        assert!(
            senders.contains(host),
            "{host} never reached the backend: {senders:?}"
        );
    }
    for host in ["web-4", "web-5", "web-6", "db-1"] {
        assert!(
            !senders.contains(host),
            "{host} reached the backend: {senders:?}"
        );
    }

    // Deployment db is untouched: same revision, same collector process, no step
    // of its own beyond its first roll-out.
    let db = deployment(&stack, "db").await;
    assert_eq!(db.revision, 1);
    let db_now = &db.hosts[0].collector.clone().unwrap();
    assert_eq!(db_now.config_hash, db_before["db-1"].config_hash);
    assert_eq!(
        db_now.pid, db_before["db-1"].pid,
        "db-1's collector was not restarted"
    );
    assert!(events(&stack, "db").await.iter().all(|e| e.revision == 1));

    // The next sync round brings the same document: held, not rolled out again.
    let plan = apply(&stack, &revision_2).await;
    assert_eq!(plan[0].action, Action::Unchanged, "{plan:?}");
    let held = plan[0].reason.clone().unwrap_or_default();
    assert!(
        held.starts_with("held: this spec is revision 2") && held.contains("web-4"),
        "{held}"
    );
    let web = deployment(&stack, "web").await;
    assert_eq!(web.revision, 1);
    assert_eq!(web.rollout.unwrap().revision, 2, "no new roll-out");

    // The CLI shows where it stopped and why.
    let described = phoenix(&stack, &["deployment", "describe", "web"]);
    for needle in [
        "Latest roll-out:",
        "rolled-back",
        "web-4",
        "cannot read credential",
        "host-failed",
        "batch-started",
    ] {
        assert!(described.contains(needle), "{needle}:\n{described}");
    }
    let json: serde_json::Value = serde_json::from_str(&phoenix(
        &stack,
        &["deployment", "get", "web", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(
        json["status"]["rollout"]["state"], "rolled-back",
        "{json:#}"
    );
    assert_eq!(
        json["status"]["rollout"]["hosts"]["web-4"]["state"], "failed",
        "{json:#}"
    );
    let listed = phoenix(&stack, &["deployment", "list"]);
    assert!(listed.contains("rolled-back (revision 2)"), "{listed}");

    drop(agents);
    reconciler.stop().await;
    stack.shutdown().await;
}
