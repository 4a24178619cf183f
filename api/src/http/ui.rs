//! The web console: its assets, embedded at build time (`api/build.rs`, from the
//! directory `console/build.sh` prints), served under `/ui` with a single-page-app
//! fallback to `index.html`, and `GET /api/v1/whoami`, which tells the console
//! what the caller's token allows.
//!
//! `index.html` is revalidated on every load (`no-cache`); files under `assets/`
//! carry a content hash in their names and are cached for a year (`immutable`).
//! A path under `assets/` that does not exist is a 404, never `index.html` (a
//! script answered with HTML would fail in confusing ways). Every answer forbids
//! framing and loading anything from another origin (a strict CSP).
//!
//! An api built without the console (`PHOENIX_CONSOLE_DIST` unset) logs so at
//! start and answers every `/ui` page with a 503 saying how to build it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use phoenix_wire::view::Whoami;

use crate::error::ApiError;
use crate::http::auth::{Caller, Role};
use crate::state::AppState;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));
}

/// Where the console lives.
pub const BASE: &str = "/ui/";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Logs, at start, when this binary carries no console.
pub fn warn_if_missing() {
    if !embedded::BUILT {
        tracing::warn!(
            "this phoenix-api was built without the web console (PHOENIX_CONSOLE_DIST was unset at build time): /ui answers 503"
        );
    }
}

/// `GET /ui`: to `/ui/`, so relative links resolve.
#[utoipa::path(get, path = "/ui", tag = "console", responses((status = 308, description = "To /ui/.")))]
pub async fn redirect() -> Redirect {
    Redirect::permanent(BASE)
}

/// `GET /ui/`: the console's page.
#[utoipa::path(get, path = "/ui/", tag = "console", responses((status = 200, description = "The console's page.", body = String, content_type = "text/html"), (status = 503, response = crate::http::openapi::ServiceUnavailable)))]
pub async fn index() -> Response {
    page(None).await
}

/// `GET /ui/{*path}`: a console asset, or a console route (its page).
#[utoipa::path(get, path = "/ui/{path}", tag = "console", params(("path" = String, Path, description = "A console asset, or a console route (answered with its page).")), responses((status = 200, description = "The asset, or the console's page.", body = String, content_type = "text/html"), (status = 404, response = crate::http::openapi::NotFound), (status = 503, response = crate::http::openapi::ServiceUnavailable)))]
pub async fn page(path: Option<Path<String>>) -> Response {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    if !embedded::BUILT {
        return ApiError::Unavailable(
            "this phoenix-api was built without its web console: build it with \
             PHOENIX_CONSOLE_DIST=$(console/build.sh) cargo build (scripts/test and scripts/demo do)"
                .into(),
        )
        .into_response();
    }
    asset(embedded::ASSETS, &path)
}

/// The answer for `path` (relative to `/ui/`) from `assets`.
fn asset(assets: &[(&str, &'static [u8])], path: &str) -> Response {
    let find = |name: &str| assets.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
    let (name, bytes) = match find(path) {
        Some(bytes) if !path.is_empty() => (path, bytes),
        _ if path.starts_with("assets/") => {
            return ApiError::NotFound(format!("the console has no asset {path}")).into_response();
        }
        // The app's own routes (experiments/NAME, fleet, …) are index.html's to draw.
        _ => match find("index.html") {
            Some(bytes) => ("index.html", bytes),
            None => {
                return ApiError::Internal("the embedded console has no index.html".into())
                    .into_response();
            }
        },
    };
    let cache = if name.starts_with("assets/") {
        IMMUTABLE
    } else if name == "index.html" {
        "no-cache"
    } else {
        "public, max-age=3600"
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `GET /api/v1/whoami` (any user token): the token's role and what it allows.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "console", responses((status = 200, description = "The token's role and what it allows.", body = phoenix_wire::view::Whoami)), security(("userToken" = ["viewer"])))]
pub async fn whoami(State(state): State<AppState>, Caller(role): Caller) -> Json<Whoami> {
    Json(Whoami {
        role: role.as_str().into(),
        can_operate: role >= Role::Operator,
        host_grace_seconds: state.config.host_grace.as_duration().as_secs(),
        auth_disabled: state.config.dev_no_auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASSETS: &[(&str, &[u8])] = &[
        ("assets/main-ABCD1234.js", b"console.log(1)"),
        ("assets/style-ABCD1234.css", b"body{}"),
        ("favicon.svg", b"<svg/>"),
        ("index.html", b"<!doctype html>"),
    ];

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response.headers()[name].to_str().unwrap()
    }

    #[test]
    fn hashed_assets_are_immutable_with_their_type() {
        let js = asset(ASSETS, "assets/main-ABCD1234.js");
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            header(&js, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header(&js, header::CACHE_CONTROL), IMMUTABLE);
        let css = asset(ASSETS, "assets/style-ABCD1234.css");
        assert_eq!(
            header(&css, header::CONTENT_TYPE),
            "text/css; charset=utf-8"
        );
        let icon = asset(ASSETS, "favicon.svg");
        assert_eq!(header(&icon, header::CONTENT_TYPE), "image/svg+xml");
        assert_eq!(header(&icon, header::CACHE_CONTROL), "public, max-age=3600");
    }

    #[test]
    fn app_routes_fall_back_to_index_which_is_revalidated() {
        for path in [
            "",
            "index.html",
            "experiments/topk-web",
            "fleet/web-1",
            "catalog",
        ] {
            let page = asset(ASSETS, path);
            assert_eq!(page.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header(&page, header::CONTENT_TYPE),
                "text/html; charset=utf-8",
                "{path}"
            );
            assert_eq!(header(&page, header::CACHE_CONTROL), "no-cache", "{path}");
            assert!(
                header(&page, header::CONTENT_SECURITY_POLICY).contains("frame-ancestors 'none'")
            );
        }
    }

    #[test]
    fn a_missing_asset_is_a_404_not_the_page() {
        let missing = asset(ASSETS, "assets/main-OLDHASH0.js");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            header(&missing, header::CONTENT_TYPE),
            phoenix_wire::problem::PROBLEM_CONTENT_TYPE
        );
    }
}
