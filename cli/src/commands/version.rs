//! `phoenix version`: this client's build and the api's (`GET /version`).

use phoenix_wire::version::{BuildInfo, ServerVersion};

use crate::commands::Context;
use crate::output;

/// What `phoenix version -o json|yaml` prints.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Versions {
    client: BuildInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<ServerVersion>,
}

/// This program's build; `PHOENIX_GIT_COMMIT` is read when it is compiled.
pub fn client() -> BuildInfo {
    BuildInfo::new(env!("CARGO_PKG_VERSION"), option_env!("PHOENIX_GIT_COMMIT"))
}

pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let client = client();
    let server = ctx.client.server_version().await;
    let versions = Versions {
        client,
        server: server.as_ref().ok().cloned(),
    };
    let text = match output::render_object(ctx.output, &versions)? {
        Some(text) => text,
        None => {
            let mut text = format!("Client: {}\n", versions.client);
            if let Some(server) = &versions.server {
                text.push_str(&format!(
                    "Server: {} at {} (body limit {})\n",
                    server.build,
                    ctx.client.api_url(),
                    crate::client::human_bytes(server.max_body_bytes)
                ));
            }
            text
        }
    };
    output::print(&text)?;
    server.map(drop).map_err(anyhow::Error::from)
}
