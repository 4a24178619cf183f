//! `phoenix pipeline ...`: the pipeline template catalog: list, show, and validate a
//! template with the real collector before anyone deploys it; and pipeline
//! deployments (standing pipelines): deploy, list-deployments, show-deployment,
//! rollback, delete-deployment (their calls and tables: [`super::deployment`]).

use clap::Subcommand;
use phoenix_wire::apply::{ApplyItem, PlanEntry};
use phoenix_wire::names;
use phoenix_wire::resource::{Metadata, PipelineTemplateDocument, PipelineTemplateSpec};
use phoenix_wire::view::{List, PipelineTemplate, PipelineValidation};

use crate::client::Body;
use crate::commands::{Context, deployment};
use crate::document;
use crate::output::{self, Details, Table};

const PIPELINES: &str = "/api/v1/pipelines";

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// List the pipeline templates experiments can use
    #[command(after_help = "Example:\n  phoenix pipeline list\n  phoenix pipeline list -o yaml")]
    List,
    /// Show one template: what it keeps, its variables and its collector config
    #[command(
        after_help = "Example:\n  phoenix pipeline show process-topk\n  phoenix pipeline show process-topk -o json"
    )]
    Show {
        /// The template name, as `phoenix pipeline list` shows it
        name: String,
    },
    /// Check a PipelineTemplate document with the collector's own `validate`
    #[command(after_help = "\
Example:
  phoenix pipeline validate -f my-pipeline.yaml
  cat my-pipeline.yaml | phoenix pipeline validate -f -

The API renders the config with its variables' defaults and runs the real collector's
`validate` on it; a rejection prints the collector's own message and exits 1.")]
    Validate {
        /// The PipelineTemplate document (`-` reads stdin)
        #[arg(short = 'f', long = "filename", alias = "file", value_name = "FILE")]
        file: String,
    },
    /// Turn your current collector config into a pipeline template (a baseline); admin only
    #[command(after_help = "\
Examples:
  phoenix pipeline import -f /etc/otelcol/config.yaml --name current
  phoenix pipeline import -f otelcol.yaml --name current --dry-run   # show, store nothing
  phoenix pipeline import -f otelcol.yaml --name current -o yaml     # the template document

What it does, and reports line by line:
  - keeps your receivers and processors (a receiver listens on 127.0.0.1; hostmetrics
    reads the host's / through ${env:PHOENIX_HOSTFS});
  - keeps metrics pipelines only: traces and logs pipelines, and what only they use,
    are removed (Phoenix compares metrics pipelines); so are zpages and pprof;
  - swaps your exporters for Phoenix's slots: remote write to the measurement
    Prometheus (labelled with phoenix.experiment/variant/host), and, when it runs as a
    deployment's standing collector, that deployment's destinations
    (`phoenix destination create`, `--destination` of `phoenix pipeline deploy`);
  - refuses, naming each, any other component that is not in the Phoenix collector
    build (collector/manifest.yaml), and every connector; nothing is stored then.

The template is stored like `phoenix apply` stores one (the real collector validates
it first), owned by the source `pipeline-import`, so importing again with the same
name replaces it. Then use it as an experiment's baseline:
  baseline: {pipeline: current}")]
    Import {
        /// Your collector config (`-` reads stdin)
        #[arg(short = 'f', long = "filename", alias = "file", value_name = "FILE")]
        file: String,
        /// The template's name
        #[arg(long)]
        name: String,
        /// Check and show it (the API validates it with the collector), store nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a pipeline as the standing collector of hosts (create a deployment, or a new revision of it)
    #[command(after_help = "\
Examples:
  phoenix pipeline deploy -f web-standing.yaml
  phoenix pipeline deploy --name web-standing --pipeline process-topk --selector role=web \\
    --var cpu_threshold=0.05 --critical nginx,postgres
  phoenix pipeline deploy --name pinned --pipeline process-baseline --host web-1,web-2

A document looks like:
  apiVersion: phoenix.dev/v1
  kind: PipelineDeployment
  metadata: {name: web-standing}
  spec:
    hosts: {selector: {role: web}}     # or {names: [web-1, web-2]}
    pipeline: process-topk
    vars: {cpu_threshold: \"0.05\"}
    criticalProcesses: [nginx, postgres]
    destinations: [vendor]             # your backends (see `phoenix destination --help`)
    rollout: {maxUnavailable: 2}       # hosts per batch, or \"25%\" (the default)

Every host the deployment selects runs one collector `<name>.standing`; hosts that
join later with matching labels get it too. Deploying a changed spec makes a new
revision (the previous one is kept for `phoenix pipeline rollback`); the same spec
again changes nothing. A new revision rolls out in batches of maxUnavailable hosts,
each batch healthy (and writing series) before the next; a host that fails stops it
and the deployment goes back to its previous revision (`phoenix deployment describe
NAME` shows each step). A host runs one standing pipeline, so a deployment may not
select a host another deployment runs on.

Standing collectors export to the measurement Prometheus (so Phoenix keeps watching
what runs) and to each --destination: the backends an admin declared with
`phoenix destination create`. A promotion into the deployment keeps its destinations.")]
    Deploy {
        /// A PipelineDeployment document (`-` reads stdin), instead of the flags
        #[arg(
            short = 'f',
            long = "filename",
            alias = "file",
            value_name = "FILE",
            conflicts_with_all = ["name", "pipeline", "selector", "host", "var", "critical", "destination", "max_unavailable"]
        )]
        file: Option<String>,
        /// The deployment's name
        #[arg(long, required_unless_present = "file")]
        name: Option<String>,
        /// The pipeline template to run (see `phoenix pipeline list`)
        #[arg(long, required_unless_present = "file")]
        pipeline: Option<String>,
        /// Run it on the hosts whose labels match, e.g. role=web,zone=a
        #[arg(long, value_name = "KEY=VALUE,...", value_parser = super::loadsim::parse_selector, conflicts_with = "host")]
        selector: Option<phoenix_wire::names::Labels>,
        /// Run it on these host ids (repeat the flag or separate with commas)
        #[arg(long, value_delimiter = ',', value_name = "HOST")]
        host: Vec<String>,
        /// A template variable, name=value (repeat for more)
        #[arg(long, value_name = "NAME=VALUE", value_parser = super::deployment::parse_var)]
        var: Vec<(String, String)>,
        /// Critical executable names, for the templates that keep them (comma-separated)
        #[arg(long, value_delimiter = ',', value_name = "NAME")]
        critical: Vec<String>,
        /// Destinations to export to besides measurement (comma-separated; see `phoenix destination list`)
        #[arg(long, value_delimiter = ',', value_name = "NAME")]
        destination: Vec<String>,
        /// Hosts a new revision moves to at once (one batch of its roll-out): a
        /// number, or a share of the selected hosts like 25% (the default)
        #[arg(long, value_name = "N|P%", value_parser = phoenix_wire::rollout::MaxUnavailable::parse)]
        max_unavailable: Option<phoenix_wire::rollout::MaxUnavailable>,
    },
    /// List pipeline deployments: what each runs, where, and how many hosts are ready
    #[command(after_help = "\
Example:
  phoenix pipeline list-deployments
  phoenix pipeline list-deployments -o yaml

READY is the number of selected hosts whose agent reports the standing collector
healthy, over the number of registered hosts selected. FROM names the experiment whose
promotion made the current revision.")]
    ListDeployments,
    /// Show one deployment: its hosts, their collectors, and its revisions
    #[command(
        after_help = "Example:\n  phoenix pipeline show-deployment web-standing\n  phoenix pipeline show-deployment web-standing -o json"
    )]
    ShowDeployment {
        /// The deployment's name
        name: String,
    },
    /// Restore a deployment's previous revision on its hosts
    #[command(after_help = "\
Example:
  phoenix pipeline rollback web-standing

The current revision is marked rolled back and the newest earlier one is current again;
rolling back twice goes back two revisions. A deployment with no earlier revision
cannot be rolled back (delete it instead). If the undone revision came from promoting
an experiment, that experiment becomes rolled-back.")]
    Rollback {
        /// The deployment's name
        name: String,
    },
    /// Delete a deployment and its history; its hosts stop its collector
    #[command(after_help = "Example:\n  phoenix pipeline delete-deployment web-standing")]
    DeleteDeployment {
        /// The deployment's name
        name: String,
    },
}

pub async fn run(ctx: &Context, command: PipelineCommand) -> anyhow::Result<()> {
    match command {
        PipelineCommand::Deploy {
            file,
            name,
            pipeline,
            selector,
            host,
            var,
            critical,
            destination,
            max_unavailable,
        } => {
            let flags = deployment::DeployFlags {
                name,
                pipeline,
                selector,
                hosts: host,
                vars: var,
                critical,
                destinations: destination,
                max_unavailable,
            };
            deployment::deploy(ctx, file, flags).await
        }
        PipelineCommand::Import {
            file,
            name,
            dry_run,
        } => import(ctx, &file, &name, dry_run).await,
        PipelineCommand::ListDeployments => deployment::list(ctx, None, None).await,
        PipelineCommand::ShowDeployment { name } => deployment::show(ctx, &name).await,
        PipelineCommand::Rollback { name } => deployment::rollback(ctx, &name).await,
        PipelineCommand::DeleteDeployment { name } => deployment::delete(ctx, &name).await,
        PipelineCommand::List => {
            let list: List<PipelineTemplate> = ctx.client.get(PIPELINES).await?;
            match output::render_object(ctx.output, &list)? {
                Some(text) => output::print(&text)?,
                None => output::print(&template_table(&list.items).render())?,
            }
            Ok(())
        }
        PipelineCommand::Show { name } => {
            names::check_resource_name(&name)
                .map_err(|m| anyhow::anyhow!("invalid pipeline name: {m}"))?;
            let template: PipelineTemplate = ctx.client.get(&format!("{PIPELINES}/{name}")).await?;
            let text = match output::render_object(ctx.output, &template)? {
                Some(text) => text,
                None => template_details(&template),
            };
            Ok(output::print(&text)?)
        }
        PipelineCommand::Validate { file } => {
            let body = document::read(
                &file,
                "a PipelineTemplate",
                "phoenix pipeline validate --help",
            )?;
            let answer: PipelineValidation = ctx
                .client
                .post(&format!("{PIPELINES}/validate"), Some(body))
                .await?;
            let text = match output::render_object(ctx.output, &answer)? {
                Some(text) => text,
                None => format!(
                    "pipeline/{} is valid: the collector accepts it\n",
                    answer.name
                ),
            };
            Ok(output::print(&text)?)
        }
    }
}

/// The source an imported template is owned by.
const IMPORT_SOURCE: &str = "pipeline-import";

/// `phoenix pipeline import`: the config made a template here (pure, see
/// `phoenix_wire::import`), then stored through apply (checked like any template).
async fn import(ctx: &Context, file: &str, name: &str, dry_run: bool) -> anyhow::Result<()> {
    names::check_resource_name(name).map_err(|m| anyhow::anyhow!("invalid --name: {m}"))?;
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?
    };
    let imported = phoenix_wire::import::import(&text).map_err(|refusals| {
        anyhow::anyhow!(
            "{file} cannot become a pipeline template; nothing was stored:\n  - {}",
            refusals.join("\n  - ")
        )
    })?;
    let document = PipelineTemplateDocument {
        api_version: phoenix_wire::API_VERSION.to_string(),
        kind: PipelineTemplateDocument::KIND.to_string(),
        metadata: Metadata {
            name: name.to_string(),
            labels: Default::default(),
        },
        spec: PipelineTemplateSpec {
            description: format!("Imported from {file} by `phoenix pipeline import`."),
            variables: Vec::new(),
            config: imported.config.clone(),
        },
    };
    let body = Body {
        bytes: serde_json::to_vec(&vec![ApplyItem {
            file: Some(file.to_string()),
            document: serde_json::to_value(&document)?,
        }])?,
        content_type: "application/json",
        origin: None,
    };
    let path = format!("/api/v1/apply?source={IMPORT_SOURCE}&prune=false&dryRun={dry_run}");
    let plan: Vec<PlanEntry> = ctx.client.post(&path, Some(body)).await?;
    let answer = serde_json::json!({
        "template": document,
        "changes": imported.changes,
        "plan": plan,
        "dryRun": dry_run,
    });
    let text = match output::render_object(ctx.output, &answer)? {
        Some(text) => text,
        None => {
            let action = plan
                .first()
                .map(|p| p.action.as_str())
                .unwrap_or("unchanged");
            let mut out = format!(
                "pipeline/{name} {}{action} from {file}; what was changed:\n",
                if dry_run {
                    "(dry run, nothing stored) would be "
                } else {
                    ""
                }
            );
            for change in &imported.changes {
                out.push_str(&format!("  - {change}\n"));
            }
            out.push_str(&format!(
                "  see it with `phoenix pipeline show {name}`; use it as an experiment's baseline: `baseline: {{pipeline: {name}}}`\n"
            ));
            out
        }
    };
    Ok(output::print(&text)?)
}

fn variables(template: &PipelineTemplate) -> String {
    let vars: Vec<String> = template
        .variables
        .iter()
        .map(|v| format!("{}={}", v.name, v.default))
        .collect();
    if vars.is_empty() {
        "-".into()
    } else {
        vars.join(" ")
    }
}

fn template_table(templates: &[PipelineTemplate]) -> Table {
    let mut table = Table::new(&["NAME", "SOURCE", "VARIABLES", "DESCRIPTION"]);
    for t in templates {
        table.row(vec![
            t.name.clone(),
            if t.builtin {
                "builtin".into()
            } else {
                "user".into()
            },
            output::truncate(&variables(t), 60),
            output::truncate(&t.description, 70),
        ]);
    }
    table
}

fn template_details(template: &PipelineTemplate) -> String {
    let mut details = Details::new();
    details
        .field("Name", &template.name)
        .field("Source", if template.builtin { "builtin" } else { "user" })
        .field("Description", &template.description);
    let mut text = details.render();
    if template.variables.is_empty() {
        text.push_str("Variables:   none\n");
    } else {
        // What an experiment may set in `vars:`, each value parsed by its type.
        let mut table = Table::new(&["VARIABLE", "TYPE", "DEFAULT", "RANGE", "DOC"]);
        for v in &template.variables {
            let range = match (v.min, v.max) {
                (None, None) => "-".to_string(),
                (min, max) => format!(
                    "{}..{}",
                    min.map(|m| m.to_string()).unwrap_or_default(),
                    max.map(|m| m.to_string()).unwrap_or_default()
                ),
            };
            table.row(vec![
                v.name.clone(),
                v.kind.map_or("undeclared", |k| k.as_str()).to_string(),
                v.default.clone(),
                range,
                if v.doc.is_empty() {
                    "-".into()
                } else {
                    v.doc.clone()
                },
            ]);
        }
        text.push_str("Variables:\n");
        text.push_str(&output::indent(&table.render(), "  "));
    }
    format!("{text}Config:\n{}", output::indent(&template.config, "  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_details_show_each_variable_with_its_type_and_doc() {
        let template: PipelineTemplate = serde_json::from_value(serde_json::json!({
            "name": "process-topk",
            "description": "keeps the busiest processes",
            "builtin": true,
            "variables": [
                {"name": "cpu_threshold", "default": "0.05", "type": "number",
                 "doc": "share of a core a process must use", "min": 0.0, "max": 64.0},
                {"name": "interval", "default": "10s"}
            ],
            "config": "receivers: {}\n",
            "updatedAt": "2026-12-01T00:00:00Z"
        }))
        .unwrap();
        let text = template_details(&template);
        let row = text
            .lines()
            .find(|l| l.contains("cpu_threshold"))
            .expect("a row for cpu_threshold");
        for part in [
            "number",
            "0.05",
            "0..64",
            "share of a core a process must use",
        ] {
            assert!(row.contains(part), "{part} missing from {row:?}");
        }
        assert!(
            text.lines()
                .any(|l| l.contains("interval") && l.contains("undeclared")),
            "{text}"
        );
    }
}
