//! API errors and their `application/problem+json` form.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use phoenix_storage::StoreError;
use phoenix_wire::problem::{FieldError, PROBLEM_CONTENT_TYPE, Problem};

/// The `Retry-After` of every 503: the database is usually back (a restart, a
/// failover) within seconds, and a client that waits this long asks again gently.
pub const RETRY_AFTER_SECONDS: &str = "2";

/// Everything a handler can answer besides success. Each maps to one status code.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(FieldError),
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    /// An agent speaking a protocol version this api does not serve.
    #[error("{0}")]
    UpgradeRequired(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) => "Malformed request body",
            ApiError::Invalid(_) => "Invalid document",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound(_) => "Not found",
            ApiError::Conflict(_) => "Conflict",
            ApiError::TooLarge(_) => "Request body too large",
            ApiError::UnsupportedMediaType(_) => "Unsupported media type",
            ApiError::TooManyRequests(_) => "Too many requests",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::UpgradeRequired(_) => "Upgrade required",
            ApiError::Internal(_) => "Internal error",
        }
    }

    pub fn to_problem(&self) -> Problem {
        let (detail, field) = match self {
            ApiError::Malformed(e) | ApiError::Invalid(e) => (
                e.message.clone(),
                Some(e.field.clone()).filter(|f| !f.is_empty()),
            ),
            other => (other.to_string(), None),
        };
        Problem {
            problem_type: "about:blank".into(),
            title: self.title().into(),
            status: self.status().as_u16(),
            detail: Some(detail),
            field,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ApiError::NotFound(format!("{what} does not exist")),
            StoreError::AlreadyExists(what) => ApiError::Conflict(format!(
                "{what} already exists; pick another name or delete the existing one first"
            )),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            err if err.is_concurrency_failure() => ApiError::Conflict(
                "a concurrent request changed the same resources at the same moment; nothing was done, retry".into(),
            ),
            err if err.is_unavailable() => {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::Unavailable("the database is unavailable; retry shortly".into())
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::Internal(
                    "an internal error occurred; the server log has the details".into(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.to_problem();
        let body = serde_json::to_vec(&problem).expect("problem serializes");
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if matches!(self, ApiError::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::Unavailable(_)) {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

impl From<crate::app::promotion::PromotionError> for ApiError {
    fn from(err: crate::app::promotion::PromotionError) -> Self {
        use crate::app::promotion::PromotionError;
        match err {
            PromotionError::Conflict(conflict) => ApiError::Conflict(conflict.to_string()),
            PromotionError::Store(err) => err.into(),
        }
    }
}
