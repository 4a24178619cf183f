//! `phoenix schema KIND`: the JSON Schema of a document kind, as published in
//! `schemas/` (generated from the types the api parses documents with).

use phoenix_wire::schema;

use crate::output;

pub const HELP: &str = "\
Examples:
  phoenix schema Experiment > experiment.schema.json
  phoenix schema PipelineDeployment

Editors that speak YAML (VS Code's YAML extension, anything using
yaml-language-server) complete and check a document with a first line like:
  # yaml-language-server: $schema=../schemas/experiment.json
The schemas are in the repository's schemas/ directory; every example carries
that line. A check here is advisory: the api checks every document again.";

/// The kinds with a schema; the name as written in a document's `kind:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    #[value(name = "Experiment", alias = "experiment")]
    Experiment,
    #[value(
        name = "PipelineTemplate",
        alias = "pipeline-template",
        alias = "pipeline"
    )]
    PipelineTemplate,
    #[value(
        name = "PipelineDeployment",
        alias = "pipeline-deployment",
        alias = "deployment"
    )]
    PipelineDeployment,
}

impl Kind {
    fn wire(self) -> schema::Kind {
        match self {
            Kind::Experiment => schema::Kind::Experiment,
            Kind::PipelineTemplate => schema::Kind::PipelineTemplate,
            Kind::PipelineDeployment => schema::Kind::PipelineDeployment,
        }
    }
}

pub fn run(kind: Kind) -> anyhow::Result<()> {
    Ok(output::print(&kind.wire().schema_text())?)
}
