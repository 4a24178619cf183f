//! Bearer-token authentication and roles.
//!
//! User tokens (configured on the api) carry a role: viewer < operator < admin.
//! Handlers ask for a role by taking one of the extractors [`Viewer`], [`Operator`]
//! or [`Admin`]; [`Caller`] is any user with its role (for `GET /api/v1/whoami`).
//!
//! Agents hold host credentials instead ([`crate::app::credentials`]): [`AgentHost`]
//! accepts only the credential of the host named in the route's `{host_id}`, and
//! user tokens cannot call the agent API, nor host credentials the user API.
//!
//! The token comes in `Authorization: Bearer <token>`. A browser cannot set that
//! header on a WebSocket, so a WebSocket handshake without it may offer the token
//! as a subprotocol instead: `Sec-WebSocket-Protocol: phoenix.events.v1,
//! phoenix.bearer.<base64url(token)>` (the api selects `phoenix.events.v1`).

use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether a caller with this role may do what `needed` allows.
    fn grants(self, needed: Role) -> bool {
        self >= needed
    }
}

/// The configured tokens: `role:token,role:token`.
#[derive(Clone, Default)]
pub struct TokenSet {
    tokens: Vec<(String, Role)>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<&str> = self.tokens.iter().map(|(_, r)| r.as_str()).collect();
        write!(f, "TokenSet({roles:?})")
    }
}

impl FromStr for TokenSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut tokens = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, token) = pair
                .split_once(':')
                .ok_or_else(|| format!("`{}…` is not `role:token`", &pair[..pair.len().min(8)]))?;
            if role.trim() == "agent" {
                return Err(
                    "`agent` tokens are gone: agents enroll with a bootstrap token \
                     (PHOENIX_BOOTSTRAP_TOKEN on the api and the agents) and then hold a \
                     credential of their own host; see docs/SECURITY.md"
                        .into(),
                );
            }
            let role = Role::parse(role.trim())
                .ok_or_else(|| format!("unknown role `{role}`; use viewer, operator or admin"))?;
            let token = token.trim();
            if token.len() < 8 {
                return Err(format!(
                    "the {} token is shorter than 8 characters",
                    role.as_str()
                ));
            }
            tokens.push((token.to_string(), role));
        }
        Ok(TokenSet { tokens })
    }
}

impl TokenSet {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn role_of(&self, presented: &str) -> Option<Role> {
        self.tokens
            .iter()
            .find(|(token, _)| constant_time_eq(token.as_bytes(), presented.as_bytes()))
            .map(|(_, r)| *r)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a WebSocket handshake offers as a `phoenix.bearer.<base64url>`
/// subprotocol, if it offers one.
fn websocket_token(parts: &Parts) -> Option<String> {
    use base64::Engine;
    let upgrade = parts.headers.get(axum::http::header::UPGRADE)?;
    if !upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    let protocols = parts
        .headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?;
    let encoded = protocols.split(',').find_map(|p| {
        p.trim()
            .strip_prefix(phoenix_wire::events::WS_BEARER_PREFIX)
    })?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The bearer token of a request: the `Authorization` header, or on a WebSocket
/// handshake the `phoenix.bearer.` subprotocol.
fn bearer(parts: &Parts) -> Result<String, ApiError> {
    let presented = match parts.headers.get(axum::http::header::AUTHORIZATION) {
        Some(header) => header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header is not `Bearer <token>`".into())
            })?
            .to_string(),
        None => websocket_token(parts).ok_or_else(|| {
            ApiError::Unauthorized("no bearer token; send `Authorization: Bearer <token>`".into())
        })?,
    };
    Ok(presented.trim().to_string())
}

/// Whether a presented text is one of the agent-side tokens.
fn is_agent_token(presented: &str) -> bool {
    phoenix_wire::credentials::parse_token(presented).is_ok()
}

/// The caller's role, when it may do what `needed` allows.
fn authorize(parts: &Parts, state: &AppState, needed: Role) -> Result<Role, ApiError> {
    if state.config.dev_no_auth {
        return Ok(Role::Admin);
    }
    let presented = bearer(parts)?;
    let Some(role) = state.config.tokens.role_of(&presented) else {
        if is_agent_token(&presented) {
            return Err(ApiError::Forbidden(
                "a host credential or bootstrap token can only call the agent API".into(),
            ));
        }
        return Err(ApiError::Unauthorized("the token is not valid".into()));
    };
    if role.grants(needed) {
        Ok(role)
    } else {
        Err(ApiError::Forbidden(format!(
            "{} token cannot do this; it needs {} token or higher",
            with_article(role.as_str()),
            with_article(needed.as_str())
        )))
    }
}

/// `an admin`, `an operator`, `a viewer`.
fn with_article(word: &str) -> String {
    let article = if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {word}")
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        /// It carries the caller's role.
        pub struct $name(pub Role);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                authorize(parts, state, $role).map($name)
            }
        }
    };
}

role_extractor!(
    Viewer,
    Role::Viewer,
    "A caller allowed to read (viewer or higher)."
);
role_extractor!(
    Operator,
    Role::Operator,
    "A caller allowed to change experiments (operator or higher)."
);
role_extractor!(
    Admin,
    Role::Admin,
    "A caller allowed everything on the user API."
);

/// An agent acting for the host in the route's `{host_id}`: it presented that
/// host's credential (401 for no valid credential, 403 for another host's).
/// Carries the host id, and the credential for a request that lasts (a long-poll
/// checks it again before it hands out work: see [`AgentHost::check_again`]).
pub struct AgentHost(pub String, pub PresentedCredential);

/// The credential an agent request presented (none with authentication off).
pub struct PresentedCredential(Option<String>);

impl AgentHost {
    /// Checks the credential again (revoked since the request began: 401).
    pub async fn check_again(&self, state: &AppState) -> Result<(), ApiError> {
        let Some(presented) = &self.1.0 else {
            return Ok(());
        };
        state.credentials.still_valid(&state.pool, presented).await
    }
}

impl FromRequestParts<AppState> for AgentHost {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::RawPathParams;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::Internal("an agent route without {host_id}".into()))?;
        let path_host = params
            .iter()
            .find(|(name, _)| *name == "host_id")
            .map(|(_, value)| value.to_string())
            .ok_or_else(|| ApiError::Internal("an agent route without {host_id}".into()))?;
        phoenix_wire::names::check_host_id(&path_host)
            .map_err(|m| ApiError::Invalid(phoenix_wire::problem::FieldError::new("host_id", m)))?;
        if state.config.dev_no_auth {
            return Ok(AgentHost(path_host, PresentedCredential(None)));
        }
        let presented = bearer(parts)?;
        if state.config.tokens.role_of(&presented).is_some() {
            return Err(ApiError::Forbidden(
                "user tokens cannot call the agent API; agents use host credentials".into(),
            ));
        }
        let credential_host = state.credentials.host_of(&state.pool, &presented).await?;
        if credential_host != path_host {
            return Err(ApiError::Forbidden(format!(
                "this credential belongs to host {credential_host}; it cannot act for host {path_host}"
            )));
        }
        Ok(AgentHost(path_host, PresentedCredential(Some(presented))))
    }
}

/// The bearer token of an enrollment request (checked by
/// [`crate::app::credentials::enroll`]).
pub struct BootstrapBearer(pub String);

impl FromRequestParts<AppState> for BootstrapBearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        bearer(parts).map(BootstrapBearer)
    }
}

/// Any user (viewer or higher), and its role; `admin` when authentication is off.
pub struct Caller(pub Role);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authorize(parts, state, Role::Viewer).map(Caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_with_their_article() {
        assert_eq!(with_article("viewer"), "a viewer");
        assert_eq!(with_article("operator"), "an operator");
        assert_eq!(with_article("admin"), "an admin");
    }

    #[test]
    fn parses_tokens_and_grants_by_role() {
        let set: TokenSet = "admin:aaaaaaaa, viewer:vvvvvvvv".parse().unwrap();
        assert_eq!(set.role_of("vvvvvvvv"), Some(Role::Viewer));
        assert_eq!(set.role_of("nope"), None);
        assert!(Role::Admin.grants(Role::Operator));
        assert!(!Role::Viewer.grants(Role::Operator));
        let gone = "admin:aaaaaaaa,agent:gggggggg"
            .parse::<TokenSet>()
            .unwrap_err();
        assert!(gone.contains("bootstrap token"), "{gone}");
        assert!("root:xxxxxxxx".parse::<TokenSet>().is_err());
        assert!("admin:short".parse::<TokenSet>().is_err());
        assert!("admin".parse::<TokenSet>().is_err());
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = axum::http::Request::builder().uri("/api/v1/events");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_websocket_handshake_may_carry_its_token_as_a_subprotocol() {
        // base64url("s3cret/token+=") without padding.
        let offered = "phoenix.events.v1, phoenix.bearer.czNjcmV0L3Rva2VuKz0";
        let handshake = parts(&[
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", offered),
        ]);
        assert_eq!(
            websocket_token(&handshake).as_deref(),
            Some("s3cret/token+=")
        );
        // Only on a WebSocket handshake, and only in that form.
        assert_eq!(
            websocket_token(&parts(&[("sec-websocket-protocol", offered)])),
            None
        );
        let garbled = parts(&[
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "phoenix.events.v1, phoenix.bearer.%%%",
            ),
        ]);
        assert_eq!(websocket_token(&garbled), None);
        assert_eq!(websocket_token(&parts(&[("upgrade", "websocket")])), None);
    }
}
