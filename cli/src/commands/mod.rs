//! The command line: global flags, one module per noun (`experiment`, `host`,
//! `loadsim`, `task`, ...), and [`run`], which loads the configuration and hands the
//! command to its noun. `completion` runs before (and without) any configuration.
//!
//! Each noun module holds its clap subcommands (with an about text and an example
//! each) and the code that calls the API and prints the answer.

pub mod apply;
pub mod completion;
pub mod credentials;
pub mod deployment;
pub mod destination;
pub mod experiment;
pub mod host;
pub mod loadsim;
pub mod man;
pub mod pipeline;
pub mod report;
pub mod schema;
pub mod sync;
pub mod task;
pub mod version;

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use phoenix_wire::duration::HumanDuration;

use crate::client::ApiClient;
use crate::config::{Config, Settings};
use crate::output::OutputFormat;

const TOP_LEVEL_HELP: &str = "\
Typical flow:
  phoenix experiment create -f topk-web.yaml   submit an experiment
  phoenix experiment list                      see every experiment and its phase
  phoenix experiment get topk-web              details: target hosts, criteria, reason
  phoenix experiment events topk-web           every phase change and why
  phoenix experiment status topk-web --watch  follow it live until it ends
  phoenix experiment report topk-web           KPIs side by side and the verdict
  phoenix experiment stop topk-web             end it early (collectors are removed)
  phoenix experiment promote topk-web          the candidate becomes the hosts' standing pipeline
  phoenix experiment rollback topk-web         restore the standing pipeline from before
  phoenix experiment delete topk-web           forget it
  phoenix host list                            the hosts whose agents report in
  phoenix host describe web-1                  its last heartbeat and every collector's health
  phoenix task list --host web-1               what Phoenix asked that host's agent to do, newest first
  phoenix task list --status failed            tasks that failed, and why
  phoenix loadsim start --host web-1 --profile high-cardinality
                                               generate process load on a host
  phoenix loadsim status                       load simulations and their live processes
  phoenix pipeline list                        the pipeline templates to choose from
  phoenix pipeline validate -f my.yaml         check a template with the real collector
  phoenix pipeline deploy -f standing.yaml     run a pipeline as hosts' standing collector
  phoenix pipeline list-deployments            standing pipelines, their hosts and revisions
  phoenix deployment describe web-standing     its latest roll-out, batch by batch, and each step
  phoenix destination create --name vendor ... a backend standing collectors export to (admin)
  phoenix diff -f gitops/                      what applying a directory would change
  phoenix apply -f gitops/ --prune             make the directory's documents the state (all or nothing)
  phoenix sync --dir gitops/ --prune           apply it again every 30s (GitOps; the Helm chart runs this)
  phoenix bootstrap-token create --ttl 24h     a token new agents enroll with (admin)
  phoenix agent-credential revoke web-1        cut a host's agent off; it must enroll again
  phoenix version                              this client's version and the api's
  phoenix schema Experiment                    the JSON Schema of a document kind (for editors)
  phoenix completion bash                      shell completions (see `phoenix completion --help`)
  phoenix man --dir DIR                        a man page per command

Configuration (flags beat environment beat file):
  --api-url   PHOENIX_API_URL   apiUrl   (default http://127.0.0.1:8080)
  --token-file (a file)  PHOENIX_TOKEN     token    (never the token itself as a flag)
  --ca-file   PHOENIX_CA_FILE   caFile   (a private CA for an https:// api)
  The file is $PHOENIX_CONFIG, or ~/.config/phoenix/config.yaml.";

/// Run a cheaper OpenTelemetry collector pipeline beside your current one, measure
/// both, and keep the winner.
#[derive(Debug, Parser)]
#[command(name = "phoenix", version, after_help = TOP_LEVEL_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Base URL of phoenix-api [env: PHOENIX_API_URL] [default: http://127.0.0.1:8080]
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// File holding the bearer token, which may instead be in the environment
    /// [env: PHOENIX_TOKEN] (a token itself is never a flag: other users see command
    /// lines in `ps`)
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM file of the private CA that signed an https:// api's certificate; only it
    /// is trusted then [env: PHOENIX_CA_FILE]
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<String>,
    /// Output format: table for people, json or yaml for the API objects as sent
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, stop and delete experiments
    #[command(visible_alias = "exp", subcommand)]
    Experiment(experiment::ExperimentCommand),
    /// List and inspect the hosts whose agents report in
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Generate process load on hosts (real processes), stop it, and see it
    #[command(subcommand)]
    Loadsim(loadsim::LoadsimCommand),
    /// List, show and validate pipeline templates
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// Standing pipelines: list, get, describe, their roll-outs' events, rollback, delete
    #[command(visible_alias = "deployments", subcommand)]
    Deployment(deployment::DeploymentCommand),
    /// Declare the backends standing collectors export to (admin): create, list, get, delete
    #[command(subcommand)]
    Destination(destination::DestinationCommand),
    /// List the tasks Phoenix gave agents (start, update, stop), by host or status
    #[command(visible_alias = "tasks", subcommand)]
    Task(task::TaskCommand),
    /// Create, list and revoke the bootstrap tokens agents enroll with (admin)
    #[command(subcommand)]
    BootstrapToken(credentials::BootstrapTokenCommand),
    /// List and revoke the per-host credentials agents hold (admin)
    #[command(subcommand)]
    AgentCredential(credentials::AgentCredentialCommand),
    /// Apply Experiment, PipelineTemplate and PipelineDeployment documents from a file or directory, all or nothing
    #[command(after_help = "\
Every *.yaml/*.yml file of a directory (recursively; several documents per file
separated by ---) is applied in one transaction: any invalid document changes
nothing and the error names its file and field. What apply creates is owned by
the source (default: the path given); --prune deletes what that source owns and
the files no longer hold, never resources created by hand or by another source.

A document's `status` is ignored, so what `get -o yaml` prints applies again
unchanged. A resource equal to its document is `unchanged` whoever owns it.

Examples:
  phoenix apply -f gitops/
  phoenix apply -f gitops/ --prune --source team-a
  phoenix apply -f gitops/ --dry-run -o json
  phoenix experiment get topk-web -o yaml | phoenix apply -f -   (a no-op)")]
    Apply {
        /// A file, a directory of *.yaml/*.yml files, or `-` for stdin
        #[arg(
            short = 'f',
            long = "filename",
            alias = "file",
            value_name = "FILE|DIR|-"
        )]
        file: String,
        /// Delete what the source owns and the files no longer hold
        #[arg(long)]
        prune: bool,
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Who owns what this apply creates (default: the path given with -f)
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
    },
    /// Show what `phoenix apply` would change, field by field, without changing anything
    #[command(after_help = "\
Each resource that would change is one line (`+` create, `~` update, `-` delete),
with each changed field of an update below it:
  ~ Experiment exp-a (spec changed (generation 2))
      spec.duration: \"10m\" -> \"30m\"

Exit code, as kubectl diff: 0 nothing would change, 1 something would, 2 an error.

Examples:
  phoenix diff -f gitops/
  phoenix diff -f gitops/ --prune
  phoenix diff -f gitops/ -o json       the plan, with each entry's `changes`")]
    Diff {
        /// A file, a directory of *.yaml/*.yml files, or `-` for stdin
        #[arg(
            short = 'f',
            long = "filename",
            alias = "file",
            value_name = "FILE|DIR|-"
        )]
        file: String,
        /// Include what --prune would delete
        #[arg(long)]
        prune: bool,
        /// The source the documents belong to (default: the path given with -f)
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
    },
    /// Apply a directory every interval, as `phoenix apply` does (GitOps: a git-sync checkout or a ConfigMap)
    #[command(after_help = "\
Every round applies the directory's *.yaml/*.yml files (recursively; names that
start with `.`, like a mounted ConfigMap's `..data`, are skipped) in one
transaction, like `phoenix apply`, and logs a line to stderr (JSON lines with
--log-format json):
  2026-11-27T12:00:00.000000Z  INFO sync round: phoenix::commands::sync: applied gitops/: 1 created, 0 updated, 3 unchanged, 0 deleted
followed by a line for each resource that changed, if any. With --otlp-endpoint
each round is a trace, which the api's apply continues. An invalid document or an
unreachable API is logged (naming the file and field) and changes nothing; the
next round tries again. SIGTERM or Ctrl-C stops it with exit code 0. An empty
directory is an error, never a reason to prune everything. Sync only logs;
for a plan as JSON or YAML use `phoenix diff -f DIR -o json`.

Examples:
  phoenix sync --dir /git/current/experiments --interval 30s --prune
  phoenix sync --dir gitops/ --once            one round; the exit code says whether it applied")]
    Sync {
        /// The directory of *.yaml/*.yml files
        #[arg(long, value_name = "DIR")]
        dir: String,
        /// Time between rounds (at least 1s)
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = sync::parse_interval)]
        interval: HumanDuration,
        /// Delete what the source owns and the directory no longer holds
        #[arg(long)]
        prune: bool,
        /// Who owns what sync creates (default: the directory given with --dir)
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
        /// Run one round and exit: 0 if it applied, 1 if not
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        telemetry: phoenix_telemetry::TelemetryArgs,
    },
    /// Show this client's version and the api's (build and git commit)
    #[command(after_help = "\
Examples:
  phoenix version
  phoenix version -o json

The api is asked at GET /version (no token needed). When it cannot be reached
the client's version is still printed, and the exit code is 1.")]
    Version,
    /// Print the JSON Schema of a document kind (Experiment, PipelineTemplate, PipelineDeployment)
    #[command(after_help = schema::HELP)]
    Schema {
        /// The document kind
        #[arg(value_enum)]
        kind: schema::Kind,
    },
    /// Print the man page, or write one per command to a directory
    #[command(after_help = man::HELP)]
    Man {
        /// Write every page (phoenix.1, phoenix-experiment-create.1, ...) here
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Print the shell completion script for bash, zsh, fish, powershell or elvish
    #[command(after_help = completion::HELP)]
    Completion {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What every command needs: the API client, the output format, and one "now" so
/// that all ages printed by one command agree.
pub struct Context {
    pub client: ApiClient,
    pub output: OutputFormat,
    pub now: DateTime<Utc>,
}

/// Runs the command; answers its exit code on success (1 for a `diff` with
/// changes, 0 otherwise).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Need no API: must work before any configuration exists.
    match cli.command {
        Command::Completion { shell } => return completion::run(shell).map(|()| ExitCode::SUCCESS),
        Command::Schema { kind } => return schema::run(kind).map(|()| ExitCode::SUCCESS),
        Command::Man { dir } => return man::run(dir.as_deref()).map(|()| ExitCode::SUCCESS),
        _ => {}
    }
    let token = match &cli.global.token_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|err| {
            anyhow::anyhow!("cannot read the token file {}: {err}", path.display())
        })?),
        None => None,
    };
    let config = Config::load(Settings {
        api_url: cli.global.api_url,
        token,
        ca_file: cli.global.ca_file,
    })?;
    let ctx = Context {
        client: ApiClient::new(&config)?,
        output: cli.global.output,
        now: Utc::now(),
    };
    if let Command::Diff {
        file,
        prune,
        source,
    } = cli.command
    {
        let args = apply::ApplyArgs {
            path: file,
            prune,
            dry_run: true,
            source,
        };
        let changes = apply::diff(&ctx, args).await?;
        return Ok(if changes {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    run_command(&ctx, cli.command).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_command(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Version => version::run(ctx).await,
        Command::Experiment(command) => experiment::run(ctx, command).await,
        Command::Host(command) => host::run(ctx, command).await,
        Command::Loadsim(command) => loadsim::run(ctx, command).await,
        Command::Pipeline(command) => pipeline::run(ctx, command).await,
        Command::Destination(command) => destination::run(ctx, command).await,
        Command::Deployment(command) => deployment::run(ctx, command).await,
        Command::Task(command) => task::run(ctx, command).await,
        Command::BootstrapToken(command) => credentials::run_bootstrap(ctx, command).await,
        Command::AgentCredential(command) => credentials::run_credential(ctx, command).await,
        Command::Completion { .. }
        | Command::Schema { .. }
        | Command::Man { .. }
        | Command::Diff { .. } => {
            unreachable!("handled in run")
        }
        Command::Apply {
            file,
            prune,
            dry_run,
            source,
        } => {
            apply::run(
                ctx,
                apply::ApplyArgs {
                    path: file,
                    prune,
                    dry_run,
                    source,
                },
            )
            .await
        }
        Command::Sync {
            dir,
            interval,
            prune,
            source,
            once,
            telemetry,
        } => {
            let telemetry = phoenix_telemetry::init("phoenix-sync", &telemetry, "info")?;
            let synced = sync::run(
                ctx,
                sync::SyncArgs {
                    dir,
                    interval: interval.as_duration(),
                    prune,
                    source,
                    once,
                },
            )
            .await;
            telemetry.shutdown().await;
            synced
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_about_and_an_example() {
        let cli = Cli::command();
        for noun in cli.get_subcommands() {
            assert!(noun.get_about().is_some(), "{}", noun.get_name());
            for verb in noun.get_subcommands() {
                let name = format!("{} {}", noun.get_name(), verb.get_name());
                assert!(verb.get_about().is_some(), "{name} has no about");
                let example = verb.get_after_help().map(|h| h.to_string());
                assert!(
                    example.is_some_and(|e| e.contains("phoenix ")),
                    "{name} has no example"
                );
            }
        }
    }

    /// One spelling, kubectl's: every `-f` is `--filename`; `--file`, the old
    /// spelling of some commands, still works but is not shown.
    #[test]
    fn every_file_flag_is_spelled_filename() {
        fn visit(command: &clap::Command, path: &str, found: &mut usize) {
            for arg in command.get_arguments() {
                if arg.get_short() == Some('f') {
                    *found += 1;
                    assert_eq!(arg.get_long(), Some("filename"), "{path}");
                    assert!(
                        arg.get_visible_aliases().is_none_or(|a| a.is_empty()),
                        "{path}"
                    );
                }
            }
            for sub in command.get_subcommands() {
                visit(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut found = 0;
        visit(&Cli::command(), "phoenix", &mut found);
        assert!(found >= 7, "{found}");
        for args in [
            &["phoenix", "apply", "--file", "x"][..],
            &["phoenix", "experiment", "create", "--file", "x"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
    }

    #[test]
    fn tasks_and_describe_are_aliases() {
        let cli = Cli::try_parse_from(["phoenix", "tasks", "list", "--status", "failed"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Task(task::TaskCommand::List { status: Some(ref s), limit: 100, .. }) if s == "failed"
        ));
        let cli = Cli::try_parse_from(["phoenix", "host", "describe", "web-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Host(host::HostCommand::Get { ref id }) if id == "web-1"
        ));
    }

    #[test]
    fn sync_takes_an_interval_and_defaults_to_30s() {
        let cli = Cli::try_parse_from(["phoenix", "sync", "--dir", "/sync", "--prune"]).unwrap();
        let Command::Sync {
            dir,
            interval,
            prune,
            once,
            source,
            ..
        } = cli.command
        else {
            panic!("not sync");
        };
        assert_eq!(
            (dir.as_str(), prune, once, source),
            ("/sync", true, false, None)
        );
        assert_eq!(interval.as_duration(), std::time::Duration::from_secs(30));
        let err = Cli::try_parse_from(["phoenix", "sync", "--dir", "d", "--interval", "10ms"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--interval"), "{err}");
    }

    #[test]
    fn exp_is_an_alias_and_flags_are_global() {
        let cli = Cli::try_parse_from(["phoenix", "exp", "get", "topk-web", "-o", "yaml"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Yaml);
        assert!(matches!(
            cli.command,
            Command::Experiment(experiment::ExperimentCommand::Get { .. })
        ));
    }
}
