//! The event stream end to end: triggers on a real Postgres, two api replicas on
//! one database, WebSocket subscribers, and `phoenix experiment status --watch`.
//!
//! Writes go through replica A and the stream is read from replica B, so an event
//! can only arrive through the database (NOTIFY), never through A's memory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually};
use phoenix_wire::events::{CLOSE_GOING_AWAY, Event, HostChange};
use phoenix_wire::view::{ExperimentEvent, List, Phase};
use reqwest::Method;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(30);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn experiment_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: web}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk}}
  warmup: 0s
  duration: 1h
"#
    )
}

/// Opens `GET {api}/api/v1/events{query}` as a WebSocket.
async fn subscribe(
    api_url: &str,
    query: &str,
    token: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let url = format!(
        "{}/api/v1/events{query}",
        api_url.replace("http://", "ws://")
    );
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next event on `socket` (pings skipped); panics on anything else or after WAIT.
async fn next_event(socket: &mut Socket) -> Event {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("an event within the deadline")
            .expect("the stream is open")
            .expect("a message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("an Event"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// Reads events until `done` says the list is complete.
async fn events_until(socket: &mut Socket, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    while !done(&events) {
        events.push(next_event(socket).await);
    }
    events
}

fn experiment_events(events: &[Event]) -> Vec<&ExperimentEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Experiment(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn task_statuses(events: &[Event], status: &str) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Task(t) if t.status == status))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_streams_experiment_host_and_task_events_in_order() {
    // The reconciler starts later, so the whole life of the experiment is live.
    let mut stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..StackOptions::default()
    })
    .await;
    let replica_b = stack.spawn_api_replica().await;

    // No token: refused before the upgrade. A name that cannot exist: 422.
    match subscribe(&replica_b, "", None).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| "a stream")),
    }
    match subscribe(&replica_b, "?experiment=Not/A/Name", Some(VIEWER_TOKEN)).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 422),
        other => panic!("expected 422, got {:?}", other.map(|_| "a stream")),
    }

    let mut everything = subscribe(&replica_b, "", Some(VIEWER_TOKEN))
        .await
        .expect("subscribe to everything");
    let mut experiment = subscribe(&replica_b, "?experiment=stream-web", Some(VIEWER_TOKEN))
        .await
        .expect("subscribe to one experiment");
    let mut host = subscribe(&replica_b, "?host=web-1", Some(VIEWER_TOKEN))
        .await
        .expect("subscribe to one host");

    stack.register_host("web-1", &[("role", "web")]).await;
    match next_event(&mut everything).await {
        Event::Host(h) => {
            assert_eq!(h.host, "web-1");
            assert_eq!(h.change, HostChange::Registered);
        }
        other => panic!("expected the host's registration, got {other:?}"),
    }
    // A second full status report is a status event; heartbeats are not events.
    stack.register_host("web-1", &[("role", "web")]).await;
    let response = stack
        .request(
            Method::POST,
            "/agent/v1/hosts/web-1/heartbeat",
            &stack.host_credential("web-1").await,
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    match next_event(&mut host).await {
        Event::Host(h) => assert_eq!(h.change, HostChange::Registered),
        other => panic!("expected a host event, got {other:?}"),
    }
    match next_event(&mut host).await {
        Event::Host(h) => assert_eq!(h.change, HostChange::Status),
        other => panic!("expected a host event, got {other:?}"),
    }

    stack
        .create_experiment(&experiment_yaml("stream-web"))
        .await;
    stack.spawn_reconciler();
    stack
        .wait_for_phase("stream-web", Phase::Deploying, WAIT)
        .await;
    let response = stack
        .request(
            Method::POST,
            "/api/v1/experiments/stream-web/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    // Stopped, and the two start tasks nobody claimed are cancelled.
    let events = events_until(&mut experiment, |events| {
        experiment_events(events)
            .last()
            .is_some_and(|e| e.to_phase == Phase::Stopped)
            && task_statuses(events, "cancelled") == 2
    })
    .await;
    let transitions: Vec<(Option<Phase>, Phase)> = experiment_events(&events)
        .iter()
        .map(|e| (e.from_phase, e.to_phase))
        .collect();
    assert_eq!(
        transitions,
        [
            (None, Phase::Pending),
            (Some(Phase::Pending), Phase::Deploying),
            (Some(Phase::Deploying), Phase::Stopped),
        ]
    );
    // Exactly what the API has recorded, field for field.
    let recorded: List<ExperimentEvent> = stack
        .request(
            Method::GET,
            "/api/v1/experiments/stream-web/events",
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let streamed: Vec<ExperimentEvent> = experiment_events(&events).into_iter().cloned().collect();
    assert_eq!(streamed, recorded.items);

    // In order: tasks are created while deploying and cancelled after the stop.
    let position = |wanted: &dyn Fn(&Event) -> bool| events.iter().position(wanted).unwrap();
    let deploying =
        position(&|e| matches!(e, Event::Experiment(e) if e.to_phase == Phase::Deploying));
    let stopped = position(&|e| matches!(e, Event::Experiment(e) if e.to_phase == Phase::Stopped));
    let mut units = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let Event::Task(task) = event else { continue };
        assert_eq!(task.host, "web-1");
        assert_eq!(task.experiment.as_deref(), Some("stream-web"));
        assert_eq!(task.action, "start");
        match task.status.as_str() {
            "pending" => {
                assert!(deploying < i && i < stopped, "{events:#?}");
                units.push(task.unit.clone());
            }
            "cancelled" => assert!(stopped < i, "{events:#?}"),
            other => panic!("unexpected task status {other}"),
        }
    }
    units.sort();
    assert_eq!(units, ["stream-web.baseline", "stream-web.candidate"]);

    // The unfiltered stream saw the same experiment events, in the same order.
    let all = events_until(&mut everything, |events| {
        experiment_events(events)
            .last()
            .is_some_and(|e| e.to_phase == Phase::Stopped)
    })
    .await;
    assert_eq!(
        experiment_events(&all)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>(),
        recorded.items
    );

    // A long reason (of characters JSON must escape) is cut so the payload fits NOTIFY.
    let reason = "\"\n".repeat(5000);
    sqlx::query(
        "INSERT INTO experiment_events (experiment, from_phase, to_phase, reason) \
         VALUES ('long-web', 'running', 'failed', $1)",
    )
    .bind(&reason)
    .execute(&stack.pool)
    .await
    .unwrap();
    let all = events_until(&mut everything, |events| {
        experiment_events(events)
            .last()
            .is_some_and(|e| e.experiment == "long-web")
    })
    .await;
    let long = experiment_events(&all).pop().unwrap();
    assert_eq!(long.reason.chars().count(), 500);
    assert!(long.reason.ends_with('…') && reason.starts_with(long.reason.trim_end_matches('…')));

    // Shutting the replicas down ends the streams with a close frame.
    let reader = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(WAIT, host.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    });
    let _ = experiment.close(None).await;
    let _ = everything.send(Message::Close(None)).await;
    stack.shutdown().await;
    assert_eq!(reader.await.unwrap(), Some(CLOSE_GOING_AWAY));
}

/// Runs `phoenix` with the stack's URL and a token, as a user would.
fn phoenix(api_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(binary("phoenix"));
    command
        .args(args)
        .env("PHOENIX_API_URL", api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent");
    command
}

/// A running `phoenix experiment status NAME --watch`.
struct Watch {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Watch {
    /// Starts it and returns once it says it is watching (so it is subscribed).
    async fn start(api_url: &str, name: &str) -> Watch {
        let mut child = phoenix(api_url, &["experiment", "status", name, "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn phoenix");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (watching_tx, watching_rx) = std::sync::mpsc::channel();
        let marker = format!("watching experiment/{name}");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in stderr.lines().map_while(Result::ok) {
                if line.starts_with(&marker) {
                    let _ = watching_tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
        let watching = tokio::task::spawn_blocking(move || watching_rx.recv_timeout(WAIT))
            .await
            .unwrap();
        let mut watch = Watch {
            child,
            stdout,
            stderr,
        };
        if watching.is_err() {
            let (_, stdout, stderr) = watch.finish().await;
            panic!("phoenix did not start watching:\n{stdout}\n{stderr}");
        }
        watch
    }

    /// Waits for it to exit; its exit status, stdout and stderr.
    async fn finish(&mut self) -> (ExitStatus, String, String) {
        let child = &mut self.child;
        let status = eventually("phoenix to exit", WAIT, || {
            let status = child.try_wait().expect("wait for phoenix");
            async move { status }
        })
        .await;
        let stdout = std::mem::replace(&mut self.stdout, std::thread::spawn(String::new));
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (status, stdout.join().unwrap(), stderr.join().unwrap())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_the_transitions_and_exits_when_the_experiment_stops() {
    let mut stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..StackOptions::default()
    })
    .await;
    let replica_b = stack.spawn_api_replica().await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack.create_experiment(&experiment_yaml("watch-web")).await;

    let mut watch = Watch::start(&replica_b, "watch-web").await;
    stack.spawn_reconciler();
    stack
        .wait_for_phase("watch-web", Phase::Deploying, WAIT)
        .await;
    let response = stack
        .request(
            Method::POST,
            "/api/v1/experiments/watch-web/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());

    let (status, stdout, stderr) = watch.finish().await;
    assert!(status.success(), "exit {status}\n{stdout}\n{stderr}");
    // The status block first (still pending), then one line per live event.
    assert!(stdout.starts_with("Name:"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Phase:") && l.ends_with(" pending")),
        "{stdout}"
    );
    let live: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("  experiment/watch-web  ") || l.contains("  task/"))
        .collect();
    let deploying = live
        .iter()
        .position(|l| l.contains("experiment/watch-web  pending -> deploying"))
        .unwrap_or_else(|| panic!("no deploying line:\n{stdout}"));
    let stopped = live
        .iter()
        .position(|l| l.contains("experiment/watch-web  deploying -> stopped"))
        .unwrap_or_else(|| panic!("no stopped line:\n{stdout}"));
    assert_eq!(
        stopped,
        live.len() - 1,
        "it exits at the terminal phase:\n{stdout}"
    );
    let tasks = live[deploying..stopped]
        .iter()
        .filter(|l| l.contains("  task/") && l.ends_with("on web-1: pending"))
        .count();
    assert_eq!(tasks, 2, "{stdout}");

    // Already stopped: -o json prints the recorded transitions, one event per line,
    // and exits at once.
    let out = phoenix(
        &replica_b,
        &["experiment", "status", "watch-web", "--watch", "-o", "json"],
    )
    .output()
    .expect("run phoenix");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phases: Vec<Phase> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(
            |line| match serde_json::from_str::<Event>(line).expect("one event per line") {
                Event::Experiment(e) => e.to_phase,
                other => panic!("expected experiment events, got {other:?}"),
            },
        )
        .collect();
    assert_eq!(phases, [Phase::Pending, Phase::Deploying, Phase::Stopped]);

    // A connection that ends is exit 1 with a hint: watch an experiment that stays
    // deploying (no agent) through a replica that shuts down.
    stack
        .create_experiment(&experiment_yaml("orphan-web"))
        .await;
    let mut watch = Watch::start(&replica_b, "orphan-web").await;
    stack.shutdown().await;
    let (status, _, stderr) = watch.finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the API closed the event stream: phoenix-api is shutting down"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "hint: the stream can resume: run `phoenix experiment status orphan-web --watch` again"
        ),
        "{stderr}"
    );
}

/// A replica serves at most `--max-event-streams` streams (429 past it, with the
/// limit named), frees a place when a stream ends, and ends a stream whose client
/// sends an oversized message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_bounded_in_number_and_message_size() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        max_event_streams: 2,
        ..Default::default()
    })
    .await;
    let first = subscribe(&stack.api_url, "", Some(VIEWER_TOKEN))
        .await
        .unwrap();
    let mut second = subscribe(&stack.api_url, "", Some(VIEWER_TOKEN))
        .await
        .unwrap();
    match subscribe(&stack.api_url, "", Some(VIEWER_TOKEN)).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("--max-event-streams"), "{body}");
        }
        other => panic!(
            "a third stream must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(first);
    let mut third = eventually("a place frees up", WAIT, || async {
        subscribe(&stack.api_url, "", Some(VIEWER_TOKEN)).await.ok()
    })
    .await;
    // A client message over the limit ends that stream; the others go on.
    second
        .send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match second.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the oversized message did not end the stream"
    );
    stack.register_host("web-1", &[("role", "web")]).await;
    assert!(matches!(next_event(&mut third).await, Event::Host(_)));
    stack.shutdown().await;
}
