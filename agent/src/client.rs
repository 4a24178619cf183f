//! HTTP to the Phoenix API's agent endpoints (`/agent/v1/hosts/{host_id}/...`), and
//! retrying failed requests with jittered exponential backoff.

use std::collections::VecDeque;
use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use phoenix_wire::agent::{
    CONFIG_BY_REFERENCE, HostStatus, PROTOCOL_HEADER, ProtocolVersion, Task, TaskBatch, TaskOutcome,
};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::problem::Problem;
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::identity::Identity;
use crate::metrics::Metrics;

/// How long requests other than the task long-poll may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than its `wait` a long-poll may take before we give up on it.
const LONG_POLL_GRACE: Duration = Duration::from_secs(10);
/// How long a request the api refused for the agent's protocol version waits
/// before its caller may ask again: only an upgrade (or a rollback) of the api or
/// the agent changes the answer, so asking sooner only fills the logs.
pub const INCOMPATIBLE_PAUSE: Duration = Duration::from_secs(60);
/// How long a connection to the api may stay idle in the pool: the long-poll's own
/// connection is reused at once, and a second one (a status report sent while the
/// long-poll waits) closes soon after, so an idle agent holds one connection.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Config bodies kept by hash: a host runs a handful of collectors, and an update
/// usually brings one new body.
const CONFIG_CACHE_ENTRIES: usize = 16;

/// A failed request to the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer: connection refused, timeout, broken connection.
    #[error("cannot reach the API for {endpoint}: {detail}")]
    Transport {
        endpoint: &'static str,
        detail: String,
    },
    /// An error status, with the problem document the API sent (or one made up from
    /// the status and body when it sent none).
    #[error("the API refused {endpoint}: {problem}")]
    Refused {
        endpoint: &'static str,
        problem: Problem,
    },
    /// The api refused the host credential and the agent enrolled again: try again.
    #[error("the API refused the host credential for {endpoint}; enrolled again")]
    Renewed { endpoint: &'static str },
    /// 426: the api does not serve this agent's protocol version; its problem
    /// names both versions.
    #[error("the API does not serve this agent's protocol version ({endpoint}): {problem}")]
    Incompatible {
        endpoint: &'static str,
        // Boxed: a second inline Problem would make every ApiError larger.
        problem: Box<Problem>,
    },
    /// A success status with a body that is not what the protocol says.
    #[error("the API answered {endpoint} with an unreadable body: {detail}")]
    Decode {
        endpoint: &'static str,
        detail: String,
    },
}

impl ApiError {
    /// True for failures that may go away by themselves: no answer, 5xx, 408, 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } | ApiError::Renewed { .. } => true,
            ApiError::Refused { problem, .. } => {
                problem.status >= 500 || problem.status == 408 || problem.status == 429
            }
            ApiError::Decode { .. } | ApiError::Incompatible { .. } => false,
        }
    }

    /// The HTTP status the API answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Refused { problem, .. } => Some(problem.status),
            ApiError::Incompatible { problem, .. } => Some(problem.status),
            _ => None,
        }
    }

    fn kind_label(&self) -> &'static str {
        match self {
            ApiError::Transport { .. } => "transport",
            ApiError::Renewed { .. } => "renewed",
            ApiError::Incompatible { .. } => "incompatible",
            ApiError::Refused { problem, .. } if problem.status >= 500 => "server",
            ApiError::Refused { .. } => "client",
            ApiError::Decode { .. } => "decode",
        }
    }
}

/// Which failures [`retry`] retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Every failure, until the request succeeds (the task long-poll: there is
    /// nothing else to do but ask again).
    UntilSuccess,
    /// Only transient failures ([`ApiError::is_transient`]); a refusal is returned.
    TransientOnly,
}

/// Delays between attempts: 200 ms doubling up to 15 s, each plus up to as much
/// again of random jitter, so 200 ms to 30 s, and agents do not retry in step.
fn api_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .without_max_times()
}

/// Runs `request` until it succeeds or fails in a way `policy` does not retry,
/// logging each failure. Callers race this with their shutdown signal.
pub async fn retry<T, F, Fut>(policy: RetryPolicy, request: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    request
        .retry(api_backoff())
        .when(|err: &ApiError| policy == RetryPolicy::UntilSuccess || err.is_transient())
        .notify(|err: &ApiError, delay: Duration| {
            tracing::warn!("{err}; retrying in {:.1}s", delay.as_secs_f64());
        })
        .await
}

/// The agent's side of the agent protocol, for one host.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// `{api_url}/agent/v1/hosts/{host_id}`
    host_url: String,
    identity: Identity,
    metrics: Metrics,
    shared: Arc<Shared>,
}

/// What the clones of one [`ApiClient`] share.
struct Shared {
    /// Whether the api has answered a status report of this agent (so the host is
    /// registered, or was refused): long-polls wait for it.
    status_answered: tokio::sync::watch::Sender<bool>,
    /// Config bodies fetched by SHA-256, oldest first.
    bodies: Mutex<VecDeque<(String, Arc<str>)>>,
    /// Whether a long-poll is waiting on the api now.
    polling: AtomicBool,
    /// The agent protocol the api last said it speaks (`major << 32 | minor`; 0 =
    /// not said, an api from before it said so).
    api_protocol: AtomicU64,
    /// Raised when the api says this host is not registered (a 404 on a heartbeat
    /// or a long-poll): the status loop registers again.
    registration_wanted: tokio::sync::Notify,
}

impl ApiClient {
    /// A client for `host_id` (which must be a valid host id, so it needs no escaping
    /// in a URL path), built from `http` (see [`crate::tls::client_builder`]).
    pub fn new(
        http: reqwest::ClientBuilder,
        api_url: &reqwest::Url,
        host_id: &str,
        identity: Identity,
        protocol: ProtocolVersion,
        metrics: Metrics,
    ) -> Self {
        let http = build_http(http, protocol);
        let base = api_url.as_str().trim_end_matches('/');
        Self {
            http,
            host_url: format!("{base}/agent/v1/hosts/{host_id}"),
            identity,
            metrics,
            shared: Arc::new(Shared {
                status_answered: tokio::sync::watch::Sender::new(false),
                bodies: Mutex::default(),
                polling: AtomicBool::default(),
                api_protocol: AtomicU64::default(),
                registration_wanted: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Marks that the api answered a status report (the host is registered).
    pub fn status_answered(&self) {
        self.shared.status_answered.send_replace(true);
    }

    /// Resolves once the api has answered a status report: the long-poll starts
    /// then, so the first poll does not find its host unregistered.
    pub async fn wait_status_answered(&self) {
        let mut answered = self.shared.status_answered.subscribe();
        let _ = answered.wait_for(|&answered| answered).await;
    }

    /// Resolves once the api said this host is not registered.
    pub async fn registration_wanted(&self) {
        self.shared.registration_wanted.notified().await
    }

    /// Whether a separate heartbeat is needed now: not while a long-poll waits on
    /// an api that counts it as the heartbeat ([`CONFIG_BY_REFERENCE`] and newer).
    pub fn needs_heartbeat(&self) -> bool {
        let said = self.shared.api_protocol.load(Ordering::Relaxed);
        let api = ProtocolVersion {
            major: (said >> 32) as u32,
            minor: said as u32,
        };
        !(self.shared.polling.load(Ordering::Relaxed) && api >= CONFIG_BY_REFERENCE)
    }

    /// `task` with its collector's config body, fetched by reference when the task
    /// names it rather than carries it (protocol 2.1), from the cache when held.
    pub async fn with_config_body(&self, mut task: Task) -> Result<Task, String> {
        let Some(sha) = task.collector.as_ref().and_then(|c| c.config_ref.clone()) else {
            return Ok(task);
        };
        let body = match self.cached_body(&sha) {
            Some(body) => body,
            None => {
                let body = retry(RetryPolicy::TransientOnly, || self.fetch_body(&sha))
                    .await
                    .map_err(|e| format!("cannot fetch config body {sha}: {e}"))?;
                let body: Arc<str> = Arc::from(body);
                let mut cache = self.shared.bodies.lock().expect("cache lock");
                if cache.len() >= CONFIG_CACHE_ENTRIES {
                    cache.pop_front();
                }
                cache.push_back((sha.clone(), body.clone()));
                body
            }
        };
        let spec = task.collector.take().expect("checked above");
        task.collector = Some(spec.with_body(body)?);
        Ok(task)
    }

    fn cached_body(&self, sha: &str) -> Option<Arc<str>> {
        let cache = self.shared.bodies.lock().expect("cache lock");
        cache.iter().find(|(s, _)| s == sha).map(|(_, b)| b.clone())
    }

    /// `GET configs/{sha256}`: a config body one of this host's tasks names.
    async fn fetch_body(&self, sha: &str) -> Result<String, ApiError> {
        const ENDPOINT: &str = "config body";
        let request = self.http.get(format!("{}/configs/{sha}", self.host_url));
        let response = self.send(ENDPOINT, request).await?;
        response.text().await.map_err(|err| {
            self.failed(ApiError::Decode {
                endpoint: ENDPOINT,
                detail: error_chain(&err),
            })
        })
    }

    /// `GET tasks?wait=...`: waits up to `wait` for tasks; the batch may be empty.
    pub async fn poll_tasks(&self, wait: Duration) -> Result<TaskBatch, ApiError> {
        const ENDPOINT: &str = "tasks";
        let wait_text = HumanDuration(wait).to_string();
        let request = self
            .http
            .get(format!("{}/tasks", self.host_url))
            .query(&[("wait", wait_text.as_str())])
            .timeout(wait + LONG_POLL_GRACE);
        self.shared.polling.store(true, Ordering::Relaxed);
        let response = self.send(ENDPOINT, request).await;
        self.shared.polling.store(false, Ordering::Relaxed);
        response?.json().await.map_err(|err| {
            self.failed(ApiError::Decode {
                endpoint: ENDPOINT,
                detail: error_chain(&err),
            })
        })
    }

    /// `POST tasks/{task_id}`: reports how a task went.
    pub async fn report_outcome(
        &self,
        task_id: i64,
        outcome: &TaskOutcome,
    ) -> Result<(), ApiError> {
        let request = self
            .http
            .post(format!("{}/tasks/{task_id}", self.host_url))
            .json(outcome);
        self.send("task outcome", request).await.map(drop)
    }

    /// `PUT status`: the host's full status.
    pub async fn put_status(&self, status: &HostStatus) -> Result<(), ApiError> {
        let request = self
            .http
            .put(format!("{}/status", self.host_url))
            .json(status);
        self.send("status", request).await.map(drop)
    }

    /// `POST heartbeat`: "still here".
    pub async fn heartbeat(&self) -> Result<(), ApiError> {
        let request = self.http.post(format!("{}/heartbeat", self.host_url));
        self.send("heartbeat", request).await.map(drop)
    }

    /// Sends with the token; turns transport failures and error statuses into errors.
    async fn send(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<Response, ApiError> {
        let token = self.identity.current();
        // The trace of the task this request is for, if any, continues at the api.
        let request = match phoenix_telemetry::current_traceparent() {
            Some(traceparent) => {
                request.header(phoenix_telemetry::context::TRACEPARENT, traceparent)
            }
            None => request,
        };
        let response = request.bearer_auth(&token).send().await.map_err(|err| {
            self.failed(ApiError::Transport {
                endpoint,
                detail: error_chain(&err),
            })
        })?;
        if let Some(api) = response
            .headers()
            .get(PROTOCOL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(ProtocolVersion::parse)
        {
            let said = (u64::from(api.major) << 32) | u64::from(api.minor);
            self.shared.api_protocol.store(said, Ordering::Relaxed);
        }
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == StatusCode::NOT_FOUND && matches!(endpoint, "tasks" | "heartbeat") {
            self.shared.registration_wanted.notify_one();
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            let body = response.bytes().await.unwrap_or_default();
            let err = self.failed(ApiError::Incompatible {
                endpoint,
                problem: Box::new(problem_from(status, &body)),
            });
            tracing::error!("{err}; asking again in {}s", INCOMPATIBLE_PAUSE.as_secs());
            tokio::time::sleep(INCOMPATIBLE_PAUSE).await;
            return Err(err);
        }
        if status == StatusCode::UNAUTHORIZED && self.identity.renew(&token).await {
            return Err(self.failed(ApiError::Renewed { endpoint }));
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(self.failed(ApiError::Refused {
            endpoint,
            problem: problem_from(status, &body),
        }))
    }

    fn failed(&self, err: ApiError) -> ApiError {
        let endpoint = match &err {
            ApiError::Transport { endpoint, .. }
            | ApiError::Refused { endpoint, .. }
            | ApiError::Renewed { endpoint }
            | ApiError::Incompatible { endpoint, .. }
            | ApiError::Decode { endpoint, .. } => *endpoint,
        };
        self.metrics.api_error(endpoint, err.kind_label());
        err
    }
}

/// The agent's HTTP client for the api: its timeout, user agent, and the protocol
/// version it speaks on every request.
pub fn build_http(http: reqwest::ClientBuilder, protocol: ProtocolVersion) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        PROTOCOL_HEADER,
        protocol
            .to_string()
            .parse()
            .expect("a version is a header value"),
    );
    http.timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .default_headers(headers)
        .user_agent(concat!("phoenix-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("an HTTP client with rustls and ring always builds")
}

/// The problem document in an error body, or one made from the status and the body.
pub(crate) fn problem_from(status: StatusCode, body: &[u8]) -> Problem {
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        return problem;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    Problem {
        problem_type: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        detail: (!text.is_empty()).then(|| text.chars().take(500).collect()),
        field: None,
    }
}

/// An error with its causes, `outer: inner: innermost` (reqwest's own message names
/// only the URL).
pub(crate) fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_read_or_made_up() {
        let body = br#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"unknown agent token"}"#;
        let problem = problem_from(StatusCode::UNAUTHORIZED, body);
        assert_eq!(problem.detail.as_deref(), Some("unknown agent token"));

        let problem = problem_from(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(problem.status, 502);
        assert_eq!(problem.title, "Bad Gateway");
        assert_eq!(problem.detail.as_deref(), Some("upstream down"));
    }

    #[test]
    fn only_unanswered_and_server_errors_are_transient() {
        let refused = |status| ApiError::Refused {
            endpoint: "status",
            problem: problem_from(StatusCode::from_u16(status).unwrap(), b""),
        };
        assert!(refused(503).is_transient());
        assert!(refused(429).is_transient());
        assert!(!refused(400).is_transient());
        assert!(!refused(401).is_transient());
        let transport = ApiError::Transport {
            endpoint: "tasks",
            detail: "connection refused".into(),
        };
        assert!(transport.is_transient());
    }
}
