//! The agent protocol is versioned: every agent request names its version in the
//! `phoenix-agent-protocol` header. An api serves agents of its major version from
//! one minor version behind; any other agent gets a 426 naming both versions (an
//! agent that sends no header is a release before it, protocol 1.0), and a real
//! agent refused so logs it and asks again once a minute per loop, not in a spin.
//!
//! An api of another protocol version is stood for by the api's hidden
//! `agent_protocol` setting: the real api of this build, claiming a newer version.

use std::time::Duration;

use phoenix_e2e::harness::{
    AgentProcess, BOOTSTRAP_TOKEN, Stack, VIEWER_TOKEN, api_config, eventually,
};
use phoenix_wire::agent::{AGENT_PROTOCOL, PROTOCOL_HEADER, ProtocolVersion};
use phoenix_wire::problem::Problem;
use reqwest::Method;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

/// Another api replica on the stack's database, speaking `protocol`.
async fn api_speaking(
    stack: &Stack,
    protocol: ProtocolVersion,
    stop: &watch::Receiver<bool>,
) -> String {
    let mut config = api_config(&stack.database_url);
    config.agent_protocol = protocol;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(phoenix_api::serve(config, listener, stop.clone()));
    let http = stack.http.clone();
    eventually("the api replica ready", WAIT, || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(format!("{url}/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    url
}

async fn enroll(stack: &Stack, header: Option<&str>) -> (u16, Option<String>, String) {
    // Not the stack's client: it names this build's version on every request.
    let _ = phoenix_e2e::harness::http_client();
    let mut request = reqwest::Client::new()
        .post(stack.url("/agent/v1/enroll"))
        .bearer_auth(BOOTSTRAP_TOKEN)
        .json(&serde_json::json!({ "host_id": "versioned-1" }));
    if let Some(header) = header {
        request = request.header(PROTOCOL_HEADER, header);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let answered = response
        .headers()
        .get(PROTOCOL_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    (status, answered, response.text().await.unwrap())
}

/// Requests the api at `url` answered with 426, from its /metrics.
async fn refused_426(http: &reqwest::Client, url: &str) -> u64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("phoenix_api_http_requests_total") && l.contains("status=\"426\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_of_another_protocol_version_are_told_so_and_one_minor_behind_is_served() {
    let stack = Stack::start().await;
    let (_stop_tx, stop) = watch::channel(false);

    // No header: an agent from before versioning.
    let (status, answered, body) = enroll(&stack, None).await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(
        answered.as_deref(),
        Some(AGENT_PROTOCOL.to_string().as_str())
    );
    let problem: Problem = serde_json::from_str(&body).unwrap();
    let detail = problem.detail.unwrap();
    assert!(
        detail.contains(&format!("speaks agent protocol {AGENT_PROTOCOL}")),
        "{detail}"
    );
    assert!(detail.contains("this agent speaks 1.0"), "{detail}");
    assert!(
        detail.contains("no phoenix-agent-protocol header"),
        "{detail}"
    );
    // The next major version, and nonsense.
    let next_major = format!("{}.0", AGENT_PROTOCOL.major + 1);
    let (status, _, body) = enroll(&stack, Some(&next_major)).await;
    assert_eq!(status, 426);
    assert!(
        body.contains(&format!("this agent speaks {next_major}")),
        "{body}"
    );
    let (status, _, body) = enroll(&stack, Some("latest")).await;
    assert_eq!(status, 426);
    assert!(
        body.contains("\\\"latest\\\", which is no version"),
        "{body}"
    );
    // Its own version passes the check (and enrolls).
    let (status, _, body) = enroll(&stack, Some(&AGENT_PROTOCOL.to_string())).await;
    assert_eq!(status, 201, "{body}");

    // An api one minor version ahead serves this build's agent: a DaemonSet that
    // rolls after the api.
    let ahead = ProtocolVersion {
        major: AGENT_PROTOCOL.major,
        minor: AGENT_PROTOCOL.minor + 1,
    };
    let newer_api = api_speaking(&stack, ahead, &stop).await;
    let mut agent = AgentProcess::spawn(&newer_api, "behind-1", &[("role", "web")]);
    eventually("the agent one minor behind registered", WAIT, || {
        let stack = &stack;
        async move {
            let r = stack
                .request(Method::GET, "/api/v1/hosts/behind-1", VIEWER_TOKEN)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    assert_eq!(
        refused_426(&stack.http, &newer_api).await,
        0,
        "{}",
        agent.log()
    );

    // The same agent (its credential on disk) against an api of the next major
    // version: refused, logged with both versions, asked again once a minute.
    agent.kill();
    let major_api = api_speaking(
        &stack,
        ProtocolVersion {
            major: AGENT_PROTOCOL.major + 1,
            minor: 0,
        },
        &stop,
    )
    .await;
    agent.api_url = major_api.clone();
    agent.start();
    let log = eventually("the agent to log the refusal", WAIT, || {
        let log = agent.log();
        async move {
            log.contains("does not serve this agent's protocol")
                .then_some(log)
        }
    })
    .await;
    assert!(
        log.contains(&format!(
            "speaks agent protocol {}.0",
            AGENT_PROTOCOL.major + 1
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("this agent speaks {AGENT_PROTOCOL}")),
        "{log}"
    );
    assert!(log.contains("asking again in 60s"), "{log}");
    // Ten seconds later: one refused request per loop (tasks, status, heartbeat),
    // no more, and the agent still runs.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let refused = refused_426(&stack.http, &major_api).await;
    println!("requests refused with 426 in ~10 s: {refused}");
    assert!(
        (1..=4).contains(&refused),
        "{refused} refused requests in 10 s: it spins"
    );
    let pid = agent.pid().unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !phoenix_e2e::harness::is_zombie(pid),
        "the agent exited: {}",
        agent.log()
    );
    agent.kill();
    stack.shutdown().await;
}
