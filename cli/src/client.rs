//! The HTTP client for the user API (`/api/v1`): base URL, bearer token, and
//! [`ClientError`], which turns whatever went wrong (a `problem+json` answer, a
//! refused connection, a body that does not fit the contract) into a message that
//! says what was wrong and what to do next.

use std::time::Duration;

use phoenix_wire::problem::Problem;
use phoenix_wire::version::ServerVersion;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::Config;

/// How long one request may take, connection included. Every current command is a
/// single short request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an unexpected (non-problem) error body is shown to the user.
const MAX_BODY_SNIPPET: usize = 300;

/// A request body, its media type, and where it came from (a file, `stdin`) for
/// the message that refuses one over the api's body limit.
pub struct Body {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub origin: Option<String>,
}

/// The api's default body limit (`--max-body-bytes`), assumed when an older api
/// has no `/version` to ask.
const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Bodies up to this size are sent without asking the api for its limit first.
const ASK_LIMIT_ABOVE: usize = 64 * 1024;

/// Talks to one phoenix-api.
pub struct ApiClient {
    http: reqwest::Client,
    api_url: String,
    token: Option<String>,
    ca_file: Option<std::path::PathBuf>,
}

impl ApiClient {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let http = crate::tls::client_builder(config.ca_file.as_deref())?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("phoenix-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            api_url: config.api_url.clone(),
            token: config.token.clone(),
            ca_file: config.ca_file.clone(),
        })
    }

    /// The API's base URL, e.g. `http://127.0.0.1:8080`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The private CA file, if one is configured.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// The bearer token, if one is configured.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.send(Method::GET, path, None).await?;
        decode(&Method::GET, path, &bytes)
    }

    /// `POST path` with an optional body, decoding the JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Body>,
    ) -> Result<T, ClientError> {
        if let Some(body) = &body {
            self.check_body_size(body).await?;
        }
        let bytes = self.send(Method::POST, path, body).await?;
        decode(&Method::POST, path, &bytes)
    }

    /// `DELETE path`; the answer has no body.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, None).await.map(drop)
    }

    /// `DELETE path`, decoding the JSON answer (for deletes that return the object).
    pub async fn delete_returning<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let bytes = self.send(Method::DELETE, path, None).await?;
        decode(&Method::DELETE, path, &bytes)
    }

    /// `GET /version` of the api: its build and its body limit.
    pub async fn server_version(&self) -> Result<ServerVersion, ClientError> {
        self.get("/version").await
    }

    /// Refuses, before sending, a body the api would refuse: over its body limit
    /// the api closes the connection while the body is still being written, which
    /// reads as `Broken pipe`. The limit is asked for only for a large body.
    async fn check_body_size(&self, body: &Body) -> Result<(), ClientError> {
        let size = body.bytes.len();
        if size <= ASK_LIMIT_ABOVE {
            return Ok(());
        }
        let limit = match self.server_version().await {
            Ok(version) => version.max_body_bytes,
            Err(ClientError::Api { .. } | ClientError::UnexpectedBody { .. }) => DEFAULT_MAX_BODY,
            Err(err) => return Err(err),
        };
        if size <= limit {
            return Ok(());
        }
        Err(ClientError::TooLarge {
            what: body
                .origin
                .clone()
                .unwrap_or_else(|| "the request".to_string()),
            size,
            limit,
        })
    }

    /// Sends one request and returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.api_url);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header(ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        // Inside a traced span (`phoenix sync`'s rounds), the api continues the trace.
        if let Some(traceparent) = phoenix_telemetry::current_traceparent() {
            request = request.header(phoenix_telemetry::context::TRACEPARENT, traceparent);
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, body.content_type)
                .body(body.bytes);
        }
        let transport = |err: reqwest::Error| ClientError::from_transport(&self.api_url, err);
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?.to_vec();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(ClientError::Api {
            method: method.to_string(),
            path: path.to_string(),
            problem: Box::new(problem_from_body(status, &bytes)),
        })
    }
}

fn decode<T: DeserializeOwned>(
    method: &Method,
    path: &str,
    bytes: &[u8],
) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|err| ClientError::UnexpectedBody {
        method: method.to_string(),
        path: path.to_string(),
        message: err.to_string(),
    })
}

/// Reads an error answer as a [`Problem`]. An answer that is not one (a proxy's HTML
/// page, say) becomes a problem titled by its status, showing the start of the body.
pub fn problem_from_body(status: StatusCode, body: &[u8]) -> Problem {
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        return problem;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let detail = (!text.is_empty()).then(|| {
        let mut snippet: String = text.chars().take(MAX_BODY_SNIPPET).collect();
        if snippet.len() < text.len() {
            snippet.push_str("...");
        }
        snippet
    });
    Problem {
        problem_type: "about:blank".into(),
        title: status
            .canonical_reason()
            .unwrap_or("unexpected HTTP status")
            .to_string(),
        status: status.as_u16(),
        detail,
        field: None,
    }
}

/// Why a request did not give the answer the command wanted.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error. (Boxed: it is the large variant.)
    #[error("{}", .problem.title)]
    Api {
        method: String,
        path: String,
        problem: Box<Problem>,
    },
    /// Nothing answered at the API URL.
    #[error("cannot connect to {api_url}: {cause}")]
    Unreachable { api_url: String, cause: String },
    /// The API took longer than the request timeout.
    #[error("{api_url} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout { api_url: String },
    /// The connection failed in some other way.
    #[error("request to {api_url} failed: {cause}")]
    Transport { api_url: String, cause: String },
    /// A body over the api's limit, refused before it was sent.
    #[error(
        "{what} is {} ({size} bytes), over the api's body limit of {} ({limit} bytes); nothing was sent",
        human_bytes(*size),
        human_bytes(*limit)
    )]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    /// A 2xx answer whose body does not fit the contract.
    #[error("unexpected answer to {method} {path}: {message}")]
    UnexpectedBody {
        method: String,
        path: String,
        message: String,
    },
}

impl ClientError {
    fn from_transport(api_url: &str, err: reqwest::Error) -> Self {
        let api_url = api_url.to_string();
        if err.is_timeout() && !err.is_connect() {
            return ClientError::Timeout { api_url };
        }
        let cause = root_cause(&err);
        if err.is_connect() {
            ClientError::Unreachable { api_url, cause }
        } else {
            ClientError::Transport { api_url, cause }
        }
    }

    /// The lines printed to stderr: `error: ...`, the offending field if any, and a
    /// hint when the next step is obvious.
    pub fn render(&self) -> String {
        let mut text = match self {
            ClientError::Api { problem, .. } => {
                let mut text = match &problem.detail {
                    Some(detail) => format!("error: {}: {detail}", problem.title),
                    None => format!("error: {}", problem.title),
                };
                if let Some(field) = &problem.field {
                    text.push_str(&format!("\n  field: {field}"));
                }
                text
            }
            other => format!("error: {other}"),
        };
        text = crate::output::shown(&text);
        if let Some(hint) = self.hint() {
            text.push_str(&format!("\n  hint: {hint}"));
        }
        text
    }

    fn hint(&self) -> Option<String> {
        match self {
            ClientError::Api {
                method,
                path,
                problem,
            } => api_hint(method, path, problem.status),
            ClientError::Unreachable { api_url, .. } | ClientError::Timeout { api_url } => Some(
                format!("is phoenix-api running at {api_url}? set --api-url or PHOENIX_API_URL"),
            ),
            ClientError::Transport { .. } => None,
            ClientError::TooLarge { .. } => Some(
                "split the documents over several requests, or raise the api's --max-body-bytes (PHOENIX_API_MAX_BODY)".into(),
            ),
            ClientError::UnexpectedBody { .. } => Some(
                "the API and this CLI may be of different versions; compare `phoenix --version` with the server's".into(),
            ),
        }
    }
}

fn api_hint(method: &str, path: &str, status: u16) -> Option<String> {
    const EXPERIMENTS: &str = "/api/v1/experiments";
    const HOSTS: &str = "/api/v1/hosts";
    let hint = match status {
        401 => "set PHOENIX_TOKEN or pass --token-file",
        403 => "this needs a token with a stronger role (viewer < operator < admin)",
        404 if path.starts_with(&format!("{EXPERIMENTS}/")) => {
            "list experiments with `phoenix experiment list`"
        }
        404 if path.starts_with(&format!("{HOSTS}/")) => "list hosts with `phoenix host list`",
        404 if path.starts_with("/api/v1/deployments/") => {
            "list pipeline deployments with `phoenix pipeline list-deployments`"
        }
        404 if path.starts_with("/api/v1/loadsims/") => {
            "list load simulations with `phoenix loadsim status`"
        }
        409 if method == "POST" && path == EXPERIMENTS => {
            "choose another metadata.name, or delete the existing experiment with `phoenix experiment delete NAME`"
        }
        500..=599 => "the API failed; its logs say more",
        _ => return None,
    };
    Some(hint.to_string())
}

/// `1.5 MiB`, `12.0 KiB`, `300 B`.
pub fn human_bytes(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// Percent-encodes a query value (`/` is kept, for readable paths).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The innermost cause of an error, e.g. `Connection refused (os error 111)`,
/// which says more than reqwest's outer "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(method: &str, path: &str, status: u16, field: Option<&str>) -> ClientError {
        ClientError::Api {
            method: method.into(),
            path: path.into(),
            problem: Box::new(Problem {
                problem_type: "about:blank".into(),
                title: "title".into(),
                status,
                detail: Some("detail".into()),
                field: field.map(String::from),
            }),
        }
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("gitops/exp dir&x"), "gitops/exp%20dir%26x");
    }

    #[test]
    fn validation_problems_name_the_field() {
        let err = api_error("POST", "/api/v1/experiments", 422, Some("spec.duration"));
        assert_eq!(err.render(), "error: title: detail\n  field: spec.duration");
    }

    #[test]
    fn unauthorized_hints_at_the_token() {
        let err = api_error("GET", "/api/v1/experiments", 401, None);
        assert_eq!(
            err.render(),
            "error: title: detail\n  hint: set PHOENIX_TOKEN or pass --token-file"
        );
    }

    #[test]
    fn not_found_hints_at_the_list_of_its_noun() {
        let exp = api_error("GET", "/api/v1/experiments/topk-web/events", 404, None);
        assert!(
            exp.render()
                .ends_with("hint: list experiments with `phoenix experiment list`"),
            "{}",
            exp.render()
        );
        let host = api_error("GET", "/api/v1/hosts/host-a", 404, None);
        assert!(
            host.render()
                .ends_with("hint: list hosts with `phoenix host list`")
        );
    }

    #[test]
    fn duplicate_names_hint_at_delete() {
        let err = api_error("POST", "/api/v1/experiments", 409, None);
        assert!(err.render().contains("phoenix experiment delete"));
    }

    #[test]
    fn problems_without_detail_or_hint_are_one_line() {
        let mut err = api_error("POST", "/api/v1/experiments", 413, None);
        if let ClientError::Api { problem, .. } = &mut err {
            problem.detail = None;
        }
        assert_eq!(err.render(), "error: title");
    }

    #[test]
    fn unreachable_api_hints_at_the_url() {
        let err = ClientError::Unreachable {
            api_url: "http://127.0.0.1:9".into(),
            cause: "Connection refused (os error 111)".into(),
        };
        assert_eq!(
            err.render(),
            "error: cannot connect to http://127.0.0.1:9: Connection refused (os error 111)\n  \
             hint: is phoenix-api running at http://127.0.0.1:9? set --api-url or PHOENIX_API_URL"
        );
    }

    #[test]
    fn error_bodies_that_are_not_problems_still_read_well() {
        let problem = problem_from_body(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(problem.title, "Bad Gateway");
        assert_eq!(problem.status, 502);
        assert_eq!(problem.detail.as_deref(), Some("<html>bad gateway</html>"));

        let empty = problem_from_body(StatusCode::NOT_FOUND, b"");
        assert_eq!(empty.detail, None);

        let long = problem_from_body(StatusCode::BAD_GATEWAY, "x".repeat(1000).as_bytes());
        assert_eq!(long.detail.unwrap().len(), MAX_BODY_SNIPPET + 3);

        let real = problem_from_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"title":"invalid experiment","status":422,"detail":"must be longer than 0s","field":"spec.duration"}"#,
        );
        assert_eq!(real.field.as_deref(), Some("spec.duration"));
        assert_eq!(real.problem_type, "about:blank");
    }
}
