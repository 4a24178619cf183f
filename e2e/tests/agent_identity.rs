//! Per-host agent identity (issue 12), against the real api, Postgres, agent and
//! CLI: an agent enrolls once with a bootstrap token and then holds a credential
//! of its own host only. Host A's credential gets 403 on every route of host B; a
//! revoked credential gets 401 at once, on every api replica within one heartbeat
//! interval; the agent then enrolls again; a revoked or expired bootstrap token
//! enrolls nobody; no answer of the API ever carries a credential except the one
//! that creates it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{
    ADMIN_TOKEN, AgentProcess, BOOTSTRAP_TOKEN, OPERATOR_TOKEN, Stack, StackOptions, enroll,
    eventually,
};
use phoenix_wire::credentials::{BootstrapTokenView, HostCredentialView};
use phoenix_wire::problem::Problem;
use phoenix_wire::view::List;
use reqwest::Method;

fn phoenix(stack: &Stack, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", token)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix")
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "phoenix failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn stack() -> Stack {
    Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await
}

/// Every agent route of `host`, as (method, path, body): the status report (which
/// registers the host) first, the heartbeat last.
fn agent_routes(host: &str) -> Vec<(Method, String, Option<serde_json::Value>)> {
    vec![
        (
            Method::PUT,
            format!("/agent/v1/hosts/{host}/status"),
            Some(serde_json::json!({"labels": {}, "agentVersion": "t", "collectors": []})),
        ),
        (
            Method::GET,
            format!("/agent/v1/hosts/{host}/tasks?wait=0s"),
            None,
        ),
        (
            Method::POST,
            format!("/agent/v1/hosts/{host}/tasks/1"),
            Some(serde_json::json!({"ok": true})),
        ),
        (
            Method::GET,
            format!("/agent/v1/hosts/{host}/configs/{}", "0".repeat(64)),
            None,
        ),
        (
            Method::POST,
            format!("/agent/v1/hosts/{host}/heartbeat"),
            None,
        ),
    ]
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    (method, path, body): &(Method, String, Option<serde_json::Value>),
) -> (u16, String) {
    let mut request = http
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_a_credential_gets_403_on_every_route_of_host_b() {
    let stack = stack().await;
    stack.register_host("web-b", &[("role", "web")]).await;
    let a = stack.host_credential("web-a").await;
    for route in agent_routes("web-b") {
        let (status, body) = call(&stack.http, &stack.api_url, &a, &route).await;
        assert_eq!(status, 403, "{} {}: {body}", route.0, route.1);
        let problem: Problem = serde_json::from_str(&body).unwrap();
        let detail = problem.detail.unwrap();
        assert!(
            detail.contains("belongs to host web-a") && detail.contains("host web-b"),
            "{detail}"
        );
    }
    // Its own routes work (the task and the config body do not exist: 404 is the
    // protocol's answer).
    let own: Vec<u16> = {
        let mut statuses = Vec::new();
        for route in agent_routes("web-a") {
            statuses.push(call(&stack.http, &stack.api_url, &a, &route).await.0);
        }
        statuses
    };
    assert_eq!(own, [204, 200, 404, 404, 204]);
    // Host B's status was not touched by A: still the labels B reported.
    let host: phoenix_wire::view::Host = stack
        .request(Method::GET, "/api/v1/hosts/web-b", ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(host.labels.get("role").map(String::as_str), Some("web"));
    // No bootstrap token, user token or made-up token acts for a host.
    let routes = agent_routes("web-a");
    let heartbeat = routes.last().unwrap();
    for (token, status) in [
        (BOOTSTRAP_TOKEN, 401),
        (ADMIN_TOKEN, 403),
        (
            "phoenix-host.0123456789ab.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            401,
        ),
        ("anything", 401),
    ] {
        assert_eq!(
            call(&stack.http, &stack.api_url, token, heartbeat).await.0,
            status,
            "{token}"
        );
    }
    stack.shutdown().await;
}

fn credential_file(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("host-credential")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_gets_401_on_every_replica_and_the_agent_enrolls_again() {
    let mut stack = stack().await;
    let replica = stack.spawn_api_replica().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    eventually("the agent enrolls", Duration::from_secs(20), || async {
        credential_file(&agent.state_dir)
            .starts_with("phoenix-host.")
            .then_some(())
    })
    .await;
    let old = credential_file(&agent.state_dir);
    let routes = agent_routes("web-1");
    let heartbeat = routes.last().unwrap();
    eventually("the agent registers", Duration::from_secs(20), || async {
        let r = stack
            .request(Method::GET, "/api/v1/hosts/web-1", ADMIN_TOKEN)
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // The replica has checked (and cached) the credential.
    assert_eq!(call(&stack.http, &replica, &old, heartbeat).await.0, 204);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.state_dir.join("host-credential"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the credential file is the agent's alone");

    let out = phoenix(
        &stack,
        ADMIN_TOKEN,
        &["agent-credential", "revoke", "web-1"],
    );
    assert!(stdout(&out).contains("of host web-1 revoked"));
    // The api that revoked it refuses it at once.
    let (status, body) = call(&stack.http, &stack.api_url, &old, heartbeat).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    // The other replica within one heartbeat interval (the agent's default, 10s).
    let revoked_at = Instant::now();
    eventually(
        "the replica refuses the revoked credential",
        Duration::from_secs(10),
        || async { (call(&stack.http, &replica, &old, heartbeat).await.0 == 401).then_some(()) },
    )
    .await;
    println!(
        "replica refused the revoked credential after {} ms",
        revoked_at.elapsed().as_millis()
    );

    // The agent enrolls again with its bootstrap token and carries on.
    eventually(
        "the agent enrolls again",
        Duration::from_secs(20),
        || async {
            let now = credential_file(&agent.state_dir);
            (now.starts_with("phoenix-host.") && now != old).then_some(())
        },
    )
    .await;
    let new = credential_file(&agent.state_dir);
    assert_eq!(call(&stack.http, &replica, &new, heartbeat).await.0, 204);
    let out = phoenix(
        &stack,
        ADMIN_TOKEN,
        &["agent-credential", "list", "--host", "web-1", "-o", "json"],
    );
    let list: List<HostCredentialView> = serde_json::from_str(&stdout(&out)).unwrap();
    let states: Vec<bool> = list.items.iter().map(|c| c.revoked_at.is_some()).collect();
    assert_eq!(states, [false, true], "newest first: {list:?}");
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_are_created_listed_and_revoked_by_admins_only() {
    let stack = stack().await;
    // Only admins.
    let out = phoenix(&stack, OPERATOR_TOKEN, &["bootstrap-token", "create"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin"));

    let out = phoenix(
        &stack,
        ADMIN_TOKEN,
        &[
            "bootstrap-token",
            "create",
            "--description",
            "rack 7",
            "-o",
            "json",
        ],
    );
    let created: BootstrapTokenView = serde_json::from_str(&stdout(&out)).unwrap();
    let token = created.token.clone().expect("shown once");
    let credential = enroll(&stack.http, &stack.api_url, "rack7-1").await;

    // Enrolling a host that holds a credential is refused, saying what to do.
    let again = stack
        .http
        .post(stack.url("/agent/v1/enroll"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"host_id": "rack7-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let text = again.text().await.unwrap();
    assert!(text.contains("agent-credential revoke rack7-1"), "{text}");

    // No list shows a secret.
    for args in [
        vec!["bootstrap-token", "list", "-o", "json"],
        vec!["agent-credential", "list", "-o", "json"],
        vec!["bootstrap-token", "list"],
    ] {
        let text = stdout(&phoenix(&stack, ADMIN_TOKEN, &args));
        assert!(!text.contains(&token[30..]), "{args:?}: {text}");
        assert!(!text.contains(&credential[30..]), "{args:?}: {text}");
    }
    let out = phoenix(&stack, ADMIN_TOKEN, &["bootstrap-token", "list"]);
    assert!(stdout(&out).contains("rack 7"));

    // Revoked: it enrolls nobody; enrolled hosts keep working.
    let out = phoenix(
        &stack,
        ADMIN_TOKEN,
        &["bootstrap-token", "revoke", &created.id],
    );
    assert!(stdout(&out).contains("revoked"));
    let refused = stack
        .http
        .post(stack.url("/agent/v1/enroll"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"host_id": "rack7-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("was revoked"));
    let status_report = &agent_routes("rack7-1")[0];
    assert_eq!(
        call(&stack.http, &stack.api_url, &credential, status_report)
            .await
            .0,
        204
    );
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM host_credentials WHERE host_id = 'rack7-2'")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(count, 0, "a refused enrollment stores nothing");

    // An expired token enrolls nobody either.
    let out = phoenix(
        &stack,
        ADMIN_TOKEN,
        &["bootstrap-token", "create", "--ttl", "1s", "-o", "json"],
    );
    let short: BootstrapTokenView = serde_json::from_str(&stdout(&out)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = stack
        .http
        .post(stack.url("/agent/v1/enroll"))
        .bearer_auth(short.token.unwrap())
        .json(&serde_json::json!({"host_id": "rack7-3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert!(expired.text().await.unwrap().contains("expired"));
    stack.shutdown().await;
}
