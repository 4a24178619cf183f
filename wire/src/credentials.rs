//! Agent identity: bootstrap tokens and host credentials, their text form, and the
//! requests and views of the enrollment and admin APIs.
//!
//! An admin creates a **bootstrap token** (`phoenix-bootstrap.<id>.<secret>`), or
//! configures one on the api. An agent presents it once to `POST /agent/v1/enroll`
//! with its host id and receives a **host credential** (`phoenix-host.<id>.<secret>`)
//! bound to that host. Every agent route under `/agent/v1/hosts/{host_id}` accepts
//! only the credential of the host in its path. The api stores SHA-256 digests of
//! the secrets, never the secrets.
//!
//! Parsing the text form is here (pure); minting secrets and checking digests is the
//! api's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The prefix of a bootstrap token.
pub const BOOTSTRAP_PREFIX: &str = "phoenix-bootstrap";
/// The prefix of a host credential.
pub const HOST_PREFIX: &str = "phoenix-host";
/// Length of a token id: lowercase hex.
pub const ID_LEN: usize = 12;
/// Length of a token secret: base64url without padding (32 random bytes).
pub const SECRET_LEN: usize = 43;

/// What kind of token a text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Bootstrap,
    Host,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Bootstrap => BOOTSTRAP_PREFIX,
            TokenKind::Host => HOST_PREFIX,
        }
    }
}

/// A token split into its parts: `<prefix>.<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    pub kind: TokenKind,
    pub id: &'a str,
    pub secret: &'a str,
}

impl std::fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.<secret>", self.kind.prefix(), self.id)
    }
}

/// Splits a token, or says why it is not one (never echoing the secret).
pub fn parse_token(text: &str) -> Result<ParsedToken<'_>, String> {
    let mut parts = text.splitn(3, '.');
    let (prefix, id, secret) = match (parts.next(), parts.next(), parts.next()) {
        (Some(p), Some(i), Some(s)) => (p, i, s),
        _ => return Err("not a Phoenix token (`<kind>.<id>.<secret>`)".into()),
    };
    let kind = match prefix {
        BOOTSTRAP_PREFIX => TokenKind::Bootstrap,
        HOST_PREFIX => TokenKind::Host,
        _ => return Err("not a Phoenix bootstrap token or host credential".into()),
    };
    check_token_id(id)?;
    if secret.len() != SECRET_LEN
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "the secret of a {} token is {SECRET_LEN} base64url characters",
            kind.prefix()
        ));
    }
    Ok(ParsedToken { kind, id, secret })
}

/// A token id: [`ID_LEN`] lowercase hex digits.
pub fn check_token_id(id: &str) -> Result<(), String> {
    if id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("a token id is {ID_LEN} lowercase hex digits"))
    }
}

/// `POST /agent/v1/enroll` (bearer: a bootstrap token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub host_id: String,
}

/// The answer to an enrollment: the host credential, shown this once.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Enrollment {
    pub host_id: String,
    pub credential_id: String,
    pub credential: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("host_id", &self.host_id)
            .field("credential_id", &self.credential_id)
            .finish_non_exhaustive()
    }
}

/// `POST /api/v1/bootstrap-tokens` (admin).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBootstrapToken {
    /// What the token is for, e.g. "DaemonSet in cluster prod-eu".
    #[serde(default)]
    pub description: String,
    /// How long it may enroll agents, e.g. `24h`; absent: until revoked.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A bootstrap token as the admin API shows it; `token` only in the answer to its
/// creation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct BootstrapTokenView {
    pub id: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Hosts enrolled with it (credentials, revoked or not).
    pub enrollments: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A host credential as the admin API shows it (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct HostCredentialView {
    pub id: String,
    pub host_id: String,
    pub bootstrap_token_id: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ-_01234";

    #[test]
    fn tokens_parse_into_kind_id_and_secret() {
        let text = format!("phoenix-host.0123456789ab.{SECRET}");
        let parsed = parse_token(&text).unwrap();
        assert_eq!(parsed.kind, TokenKind::Host);
        assert_eq!(parsed.id, "0123456789ab");
        assert_eq!(parsed.secret, SECRET);
        assert!(!format!("{parsed:?}").contains(SECRET));
        let boot = format!("phoenix-bootstrap.0123456789ab.{SECRET}");
        assert_eq!(parse_token(&boot).unwrap().kind, TokenKind::Bootstrap);
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        for bad in [
            "",
            "agent-token-for-tests",
            "phoenix-host.0123456789ab",
            &format!("phoenix-root.0123456789ab.{SECRET}"),
            &format!("phoenix-host.0123456789AB.{SECRET}"),
            &format!("phoenix-host.0123.{SECRET}"),
            "phoenix-host.0123456789ab.short",
            &format!("phoenix-host.0123456789ab.{}", SECRET.replace('_', "/")),
        ] {
            let err = parse_token(bad).unwrap_err();
            assert!(!err.contains(SECRET), "{err}");
        }
    }
}
