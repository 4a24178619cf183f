//! `phoenix destination ...` (admin): the user's backends that standing collectors
//! export to: create (or replace), list, get, delete. Credentials are references
//! (a file in the agent's credentials directory, or an environment variable of the
//! agent), never values: nothing secret is sent to or shown by the API.

use clap::Subcommand;
use phoenix_wire::API_VERSION;
use phoenix_wire::destination::{
    Credential, Destination, DestinationDocument, DestinationSpec, Protocol, Tls,
};
use phoenix_wire::names::{self, Labels};
use phoenix_wire::resource::Metadata;
use phoenix_wire::view::List;

use crate::client::Body;
use crate::commands::Context;
use crate::document;
use crate::output::{self, Details, Table};

const DESTINATIONS: &str = "/api/v1/destinations";

#[derive(Debug, Subcommand)]
pub enum DestinationCommand {
    /// Declare a backend standing collectors may export to (or replace one); admin only
    #[command(after_help = "\
Examples:
  phoenix destination create --name vendor --protocol otlp_http \\
    --endpoint https://otlp.vendor.example:4318 --credential-file authorization=vendor/token
  phoenix destination create --name local --protocol otlp_grpc --endpoint 127.0.0.1:4317 --insecure
  phoenix destination create --name thanos --protocol prometheus_remote_write \\
    --endpoint https://thanos.example/api/v1/receive --credential-env authorization=THANOS_AUTH
  phoenix destination create -f vendor.yaml

A document looks like:
  apiVersion: phoenix.dev/v1
  kind: Destination
  metadata: {name: vendor}
  spec:
    protocol: otlp_http              # otlp_grpc | otlp_http | prometheus_remote_write
    endpoint: https://otlp.vendor.example:4318
    headers: {x-team: platform}      # sent in clear; nothing secret here
    tls: {insecure: false, insecureSkipVerify: false, serverName: otlp.vendor.example}
    credentials:
      - {header: authorization, file: vendor/token}   # read by the agent
      - {header: x-api-key, env: VENDOR_API_KEY}      # the agent's own environment

Credentials are references, never values. `file` is a path inside each agent's
credentials directory (--credentials-dir, default /etc/phoenix/credentials: mount a
Secret there); `env` names a variable of the agent's environment (not PHOENIX_*). The
agent reads the value when it starts a collector and gives it to that collector
alone, as the header. Postgres and the API hold only the reference.

A deployment exports to the destinations its spec names (`phoenix pipeline deploy
--destination vendor`), besides the measurement Prometheus. Experiments never do.")]
    Create {
        /// A Destination document (`-` reads stdin), instead of the flags
        #[arg(
            short = 'f',
            long = "filename",
            alias = "file",
            value_name = "FILE",
            conflicts_with_all = ["name", "protocol", "endpoint", "header", "credential_file", "credential_env", "insecure", "insecure_skip_verify", "server_name"]
        )]
        file: Option<String>,
        /// The destination's name
        #[arg(long, required_unless_present = "file")]
        name: Option<String>,
        /// otlp_grpc, otlp_http or prometheus_remote_write
        #[arg(long, required_unless_present = "file", value_parser = parse_protocol)]
        protocol: Option<Protocol>,
        /// host:port (otlp_grpc) or URL (otlp_http: the base; prometheus_remote_write: the write URL)
        #[arg(long, required_unless_present = "file")]
        endpoint: Option<String>,
        /// A plain header, NAME=VALUE (repeat for more); nothing secret
        #[arg(long, value_name = "NAME=VALUE", value_parser = super::deployment::parse_var)]
        header: Vec<(String, String)>,
        /// A secret header read by the agent from a file in its credentials directory, HEADER=RELATIVE/PATH
        #[arg(long, value_name = "HEADER=PATH", value_parser = super::deployment::parse_var)]
        credential_file: Vec<(String, String)>,
        /// A secret header read by the agent from its environment, HEADER=VARIABLE
        #[arg(long, value_name = "HEADER=VAR", value_parser = super::deployment::parse_var)]
        credential_env: Vec<(String, String)>,
        /// Plaintext, no TLS (gRPC to host:port)
        #[arg(long)]
        insecure: bool,
        /// TLS without checking the server's certificate
        #[arg(long)]
        insecure_skip_verify: bool,
        /// The name the server's certificate must carry
        #[arg(long)]
        server_name: Option<String>,
    },
    /// List destinations and the deployments that export to them; admin only
    #[command(
        after_help = "Example:\n  phoenix destination list\n  phoenix destination list -o json"
    )]
    List,
    /// Show one destination (credentials as references; values are never stored); admin only
    #[command(after_help = "Example:\n  phoenix destination get vendor -o yaml")]
    Get {
        /// The destination's name
        name: String,
    },
    /// Delete a destination no deployment exports to; admin only
    #[command(after_help = "\
Example:
  phoenix destination delete vendor

Refused (409, naming them) while a deployment names it in spec.destinations.")]
    Delete {
        /// The destination's name
        name: String,
    },
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    [
        Protocol::OtlpGrpc,
        Protocol::OtlpHttp,
        Protocol::PrometheusRemoteWrite,
    ]
    .into_iter()
    .find(|p| p.as_str() == text)
    .ok_or_else(|| {
        format!("`{text}` is not a protocol: otlp_grpc, otlp_http or prometheus_remote_write")
    })
}

pub async fn run(ctx: &Context, command: DestinationCommand) -> anyhow::Result<()> {
    match command {
        DestinationCommand::Create {
            file,
            name,
            protocol,
            endpoint,
            header,
            credential_file,
            credential_env,
            insecure,
            insecure_skip_verify,
            server_name,
        } => {
            let body = match file {
                Some(file) => {
                    document::read(&file, "a Destination", "phoenix destination create --help")?
                }
                None => {
                    let mut credentials: Vec<Credential> = credential_file
                        .into_iter()
                        .map(|(header, file)| Credential {
                            header,
                            file: Some(file),
                            env: None,
                        })
                        .collect();
                    credentials.extend(credential_env.into_iter().map(|(header, env)| {
                        Credential {
                            header,
                            file: None,
                            env: Some(env),
                        }
                    }));
                    let doc = DestinationDocument {
                        api_version: API_VERSION.to_string(),
                        kind: DestinationDocument::KIND.to_string(),
                        metadata: Metadata {
                            name: name.unwrap_or_default(),
                            labels: Labels::new(),
                        },
                        spec: DestinationSpec {
                            protocol: protocol.unwrap_or(Protocol::OtlpHttp),
                            endpoint: endpoint.unwrap_or_default(),
                            headers: header.into_iter().collect(),
                            tls: Tls {
                                insecure,
                                insecure_skip_verify,
                                server_name,
                            },
                            credentials,
                        },
                    };
                    Body {
                        bytes: serde_json::to_vec(&doc)?,
                        content_type: "application/json",
                        origin: None,
                    }
                }
            };
            let destination: Destination = ctx.client.post(DESTINATIONS, Some(body)).await?;
            let text = match output::render_object(ctx.output, &destination)? {
                Some(text) => text,
                None => format!(
                    "destination/{} stored: {} {}\n  export to it with `phoenix pipeline deploy ... --destination {}`\n",
                    destination.name,
                    destination.spec.protocol.as_str(),
                    destination.spec.endpoint,
                    destination.name
                ),
            };
            Ok(output::print(&text)?)
        }
        DestinationCommand::List => {
            let list: List<Destination> = ctx.client.get(DESTINATIONS).await?;
            match output::render_object(ctx.output, &list)? {
                Some(text) => output::print(&text)?,
                None if list.items.is_empty() => eprintln!(
                    "No destinations yet. An admin declares one with `phoenix destination create`."
                ),
                None => {
                    let mut table =
                        Table::new(&["NAME", "PROTOCOL", "ENDPOINT", "CREDENTIALS", "USED BY"]);
                    for d in &list.items {
                        table.row(vec![
                            d.name.clone(),
                            d.spec.protocol.as_str().to_string(),
                            d.spec.endpoint.clone(),
                            d.spec.credentials.len().to_string(),
                            d.used_by.join(","),
                        ]);
                    }
                    output::print(&table.render())?
                }
            }
            Ok(())
        }
        DestinationCommand::Get { name } => {
            let destination: Destination = ctx.client.get(&path(&name)?).await?;
            let text = match output::render_object(ctx.output, &destination)? {
                Some(text) => text,
                None => details(&destination),
            };
            Ok(output::print(&text)?)
        }
        DestinationCommand::Delete { name } => {
            ctx.client.delete(&path(&name)?).await?;
            if ctx.output == output::OutputFormat::Table {
                output::print(&format!("destination/{name} deleted\n"))?;
            }
            Ok(())
        }
    }
}

fn path(name: &str) -> anyhow::Result<String> {
    names::check_resource_name(name)
        .map_err(|m| anyhow::anyhow!("invalid destination name: {m}"))?;
    Ok(format!("{DESTINATIONS}/{name}"))
}

fn details(d: &Destination) -> String {
    let mut details = Details::new();
    details
        .field("Name", &d.name)
        .field("Protocol", d.spec.protocol.as_str())
        .field("Endpoint", &d.spec.endpoint);
    for (k, v) in &d.spec.headers {
        details.field(&format!("Header {k}"), v);
    }
    for c in &d.spec.credentials {
        let source = match (&c.file, &c.env) {
            (Some(file), _) => format!("file {file} in the agent's credentials directory"),
            (_, Some(env)) => format!("the agent's environment variable {env}"),
            _ => "?".into(),
        };
        details.field(&format!("Credential {}", c.header), source);
    }
    let tls = &d.spec.tls;
    details
        .field(
            "TLS",
            if tls.insecure {
                "off (plaintext)".to_string()
            } else if tls.insecure_skip_verify {
                "on, certificate not verified".to_string()
            } else {
                format!(
                    "on{}",
                    tls.server_name
                        .as_ref()
                        .map(|n| format!(", server name {n}"))
                        .unwrap_or_default()
                )
            },
        )
        .field(
            "Used by",
            if d.used_by.is_empty() {
                "no deployment".to_string()
            } else {
                d.used_by.join(", ")
            },
        );
    details.render()
}
