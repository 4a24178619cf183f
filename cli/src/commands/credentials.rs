//! `phoenix bootstrap-token ...` and `phoenix agent-credential ...` (admin): the
//! tokens agents enroll with, and the per-host credentials they hold.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use phoenix_wire::credentials::{
    BootstrapTokenView, HostCredentialView, NewBootstrapToken, check_token_id,
};
use phoenix_wire::names;
use phoenix_wire::view::List;

use crate::client::{Body, encode};
use crate::commands::Context;
use crate::output::{self, Details, Table};

const BOOTSTRAP_TOKENS: &str = "/api/v1/bootstrap-tokens";
const AGENT_CREDENTIALS: &str = "/api/v1/agent-credentials";

#[derive(Debug, Subcommand)]
pub enum BootstrapTokenCommand {
    /// Create a token agents enroll with; it is printed once, never again
    #[command(after_help = "\
Examples:
  phoenix bootstrap-token create --description 'DaemonSet prod-eu' --ttl 24h
  phoenix bootstrap-token create -o json | jq -r .token > bootstrap-token

An agent given it (PHOENIX_BOOTSTRAP_TOKEN or --bootstrap-token-file) enrolls
once and from then on holds a credential of its own host only. Keep the token
like a password; revoke it when no new hosts should join.")]
    Create {
        /// What it is for, shown by `list`
        #[arg(long, default_value = "")]
        description: String,
        /// How long it may enroll agents, e.g. 24h (default: until revoked)
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// List bootstrap tokens: state, expiry and how many hosts enrolled with each
    #[command(after_help = "Example:\n  phoenix bootstrap-token list")]
    List,
    /// Revoke a bootstrap token: it enrolls no more agents (enrolled hosts keep working)
    #[command(after_help = "Example:\n  phoenix bootstrap-token revoke 3f9a0c12b7de")]
    Revoke {
        /// The token's id (the part after `phoenix-bootstrap.`), as `list` shows it
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCredentialCommand {
    /// List host credentials: host, id, the bootstrap token it came from, state
    #[command(
        after_help = "Examples:\n  phoenix agent-credential list\n  phoenix agent-credential list --host web-1"
    )]
    List {
        /// Only this host's
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
    },
    /// Revoke a host's credential: every api refuses it at once (401)
    #[command(after_help = "\
Example:
  phoenix agent-credential revoke web-1

The host's agent then enrolls again if it still holds a bootstrap token that is
not revoked (this rotates its credential); to shut a host out, revoke the
bootstrap tokens it could use as well.")]
    Revoke {
        /// The host id
        host: String,
    },
}

pub async fn run_bootstrap(ctx: &Context, command: BootstrapTokenCommand) -> anyhow::Result<()> {
    match command {
        BootstrapTokenCommand::Create { description, ttl } => {
            let request = NewBootstrapToken { description, ttl };
            let body = Body {
                bytes: serde_json::to_vec(&request)?,
                content_type: "application/json",
                origin: None,
            };
            let view: BootstrapTokenView = ctx.client.post(BOOTSTRAP_TOKENS, Some(body)).await?;
            match output::render_object(ctx.output, &view)? {
                Some(text) => output::print(&text)?,
                None => {
                    let mut details = Details::new();
                    details
                        .field("Id", &view.id)
                        .field("Token", view.token.as_deref().unwrap_or("-"))
                        .field("Expires", expiry(&view, ctx.now));
                    output::print(&details.render())?;
                    eprintln!(
                        "The token is shown this once. Give it to agents as PHOENIX_BOOTSTRAP_TOKEN or --bootstrap-token-file."
                    );
                }
            }
            Ok(())
        }
        BootstrapTokenCommand::List => {
            let list: List<BootstrapTokenView> = ctx.client.get(BOOTSTRAP_TOKENS).await?;
            match output::render_object(ctx.output, &list)? {
                Some(text) => output::print(&text)?,
                None if list.items.is_empty() => eprintln!(
                    "No bootstrap tokens. Create one with `phoenix bootstrap-token create`."
                ),
                None => output::print(&bootstrap_table(&list.items, ctx.now).render())?,
            }
            Ok(())
        }
        BootstrapTokenCommand::Revoke { id } => {
            check_token_id(&id).map_err(|m| anyhow::anyhow!("invalid token id: {m}"))?;
            let view: BootstrapTokenView = ctx
                .client
                .delete_returning(&format!("{BOOTSTRAP_TOKENS}/{id}"))
                .await?;
            match output::render_object(ctx.output, &view)? {
                Some(text) => output::print(&text)?,
                None => output::print(&format!(
                    "bootstrap token {} revoked; {} host(s) enrolled with it keep their credentials\n",
                    view.id, view.enrollments
                ))?,
            }
            Ok(())
        }
    }
}

pub async fn run_credential(ctx: &Context, command: AgentCredentialCommand) -> anyhow::Result<()> {
    match command {
        AgentCredentialCommand::List { host } => {
            let path = match &host {
                Some(host) => {
                    names::check_host_id(host)
                        .map_err(|m| anyhow::anyhow!("invalid host id: {m}"))?;
                    format!("{AGENT_CREDENTIALS}?host={}", encode(host))
                }
                None => AGENT_CREDENTIALS.to_string(),
            };
            let list: List<HostCredentialView> = ctx.client.get(&path).await?;
            match output::render_object(ctx.output, &list)? {
                Some(text) => output::print(&text)?,
                None if list.items.is_empty() => {
                    eprintln!("No host credentials. Agents get one when they enroll.")
                }
                None => output::print(&credential_table(&list.items, ctx.now).render())?,
            }
            Ok(())
        }
        AgentCredentialCommand::Revoke { host } => {
            names::check_host_id(&host).map_err(|m| anyhow::anyhow!("invalid host id: {m}"))?;
            let view: HostCredentialView = ctx
                .client
                .delete_returning(&format!("{AGENT_CREDENTIALS}/{host}"))
                .await?;
            match output::render_object(ctx.output, &view)? {
                Some(text) => output::print(&text)?,
                None => output::print(&format!(
                    "credential {} of host {} revoked\n",
                    view.id, view.host_id
                ))?,
            }
            Ok(())
        }
    }
}

fn expiry(view: &BootstrapTokenView, now: DateTime<Utc>) -> String {
    view.expires_at.map_or_else(
        || "never (until revoked)".into(),
        |at| output::timestamp(at, now),
    )
}

fn bootstrap_state(view: &BootstrapTokenView, now: DateTime<Utc>) -> &'static str {
    if view.revoked_at.is_some() {
        "revoked"
    } else if view.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn bootstrap_table(tokens: &[BootstrapTokenView], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&["ID", "STATE", "ENROLLED", "EXPIRES", "AGE", "DESCRIPTION"]);
    for token in tokens {
        table.row(vec![
            token.id.clone(),
            bootstrap_state(token, now).to_string(),
            token.enrollments.to_string(),
            token.expires_at.map_or_else(
                || "never".into(),
                |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            ),
            output::age(token.created_at, now),
            output::truncate(&token.description, 40),
        ]);
    }
    table
}

fn credential_table(credentials: &[HostCredentialView], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&["HOST", "ID", "STATE", "BOOTSTRAP-TOKEN", "AGE"]);
    for credential in credentials {
        table.row(vec![
            credential.host_id.clone(),
            credential.id.clone(),
            if credential.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .to_string(),
            credential.bootstrap_token_id.clone(),
            output::age(credential.created_at, now),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn tables_say_which_tokens_still_work() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let token = |id: &str, revoked: bool, expires_in: Option<i64>| BootstrapTokenView {
            id: id.into(),
            description: "fleet".into(),
            created_at: now - chrono::Duration::hours(2),
            expires_at: expires_in.map(|s| now + chrono::Duration::seconds(s)),
            revoked_at: revoked.then_some(now),
            enrollments: 3,
            token: None,
        };
        let text = bootstrap_table(
            &[
                token("aaaaaaaaaaaa", false, None),
                token("bbbbbbbbbbbb", true, None),
                token("cccccccccccc", false, Some(-1)),
            ],
            now,
        )
        .render();
        let states: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(states, ["active", "revoked", "expired"], "{text}");
        let credential = HostCredentialView {
            id: "dddddddddddd".into(),
            host_id: "web-1".into(),
            bootstrap_token_id: "aaaaaaaaaaaa".into(),
            created_at: now,
            revoked_at: Some(now),
        };
        let text = credential_table(&[credential], now).render();
        assert!(
            text.contains("web-1   dddddddddddd   revoked   aaaaaaaaaaaa"),
            "{text}"
        );
    }
}
