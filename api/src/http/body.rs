//! Reading resource documents from request bodies: JSON or YAML by `Content-Type`,
//! with a size limit, every failure as a problem naming what was wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use phoenix_wire::problem::FieldError;
use phoenix_wire::resource::DocumentFormat;

use crate::error::ApiError;
use crate::state::AppState;

/// A raw resource document and its format, not yet parsed.
pub struct DocumentBody {
    pub bytes: Bytes,
    pub format: DocumentFormat,
}

impl FromRequest<AppState> for DocumentBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let format = match content_type
            .as_deref()
            .map(|ct| ct.split(';').next().unwrap_or("").trim())
        {
            None | Some("application/json") => DocumentFormat::Json,
            Some("application/yaml" | "application/x-yaml" | "text/yaml") => DocumentFormat::Yaml,
            Some(other) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "`{other}` is not supported; send application/json or application/yaml"
                )));
            }
        };
        let limit = state.config.max_body_bytes;
        let declared_length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared_length.is_some_and(|len| len > limit) {
            return Err(ApiError::TooLarge(limit));
        }
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|err| {
                // A chunked body without Content-Length hits the limit while streaming.
                if err.to_string().contains("length limit exceeded") {
                    ApiError::TooLarge(limit)
                } else {
                    ApiError::Malformed(FieldError::new(
                        "",
                        format!("could not read the body: {err}"),
                    ))
                }
            })?;
        if body.is_empty() {
            return Err(ApiError::Malformed(FieldError::new(
                "",
                "the body is empty; send a resource document",
            )));
        }
        Ok(DocumentBody {
            bytes: body,
            format,
        })
    }
}
