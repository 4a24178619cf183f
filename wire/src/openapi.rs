//! The schemas of the api's request and response bodies, for its OpenAPI document
//! (`GET /api/v1/openapi.json`, built in `phoenix-api`'s `http::openapi`). Only with
//! the `openapi` feature, which `phoenix-api` turns on.
//!
//! One place per concept: a body's shape is its wire type's `schemars::JsonSchema`
//! derive, the same derive that generates the published document schemas
//! (`schemas/*.json`, [`crate::schema`]). utoipa describes the operations
//! (`#[utoipa::path]` on each handler: method, path, parameters, status codes), and
//! its `body = T` needs `T: utoipa::ToSchema`. Deriving `ToSchema` as well would
//! describe every field twice, in two attribute languages that drift (ranges,
//! patterns, defaults, serde renames), so the types below implement `ToSchema` only
//! to tell utoipa the *name* of their schema, and [`components`] generates the
//! schemas themselves with schemars (JSON Schema 2020-12, which OpenAPI 3.1 uses),
//! with `$ref`s into `#/components/schemas/`. The api replaces the placeholders
//! utoipa collected with exactly these, and its tests check that every `$ref`
//! resolves.

use std::borrow::Cow;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, Schema};

/// What utoipa's own collection holds for a body type until [`components`] replaces
/// it: an empty schema, never served.
fn placeholder() -> RefOr<Schema> {
    RefOr::T(Schema::Object(Object::new()))
}

/// Where schemars puts the definitions: OpenAPI's component schemas.
const COMPONENTS: &str = "/components/schemas/";

macro_rules! bodies {
    ($($ty:ty),* $(,)?) => {
        $(
            impl utoipa::PartialSchema for $ty {
                fn schema() -> RefOr<Schema> {
                    placeholder()
                }
            }
            impl utoipa::ToSchema for $ty {
                fn name() -> Cow<'static, str> {
                    <$ty as JsonSchema>::schema_name()
                }
            }
        )*

        /// The component schemas of every body type, and of every type they use,
        /// by name. Panics when two types would share a name (a test calls it).
        pub fn components() -> serde_json::Map<String, serde_json::Value> {
            let mut generator = SchemaSettings::draft2020_12()
                .with(|s| s.definitions_path = COMPONENTS.into())
                .into_generator();
            $(
                let reference = generator.subschema_for::<$ty>();
                let expected = format!("#{COMPONENTS}{}", <$ty as JsonSchema>::schema_name());
                assert_eq!(
                    reference.get("$ref").and_then(|r| r.as_str()),
                    Some(expected.as_str()),
                    "the schema of {} is not a component of its own name",
                    stringify!($ty)
                );
            )*
            generator.take_definitions(true)
        }
    };
}

/// `{"items": [...]}` of each listed type (utoipa's `body =` takes a plain path).
pub mod lists {
    use crate::view::List;
    pub type Experiments = List<crate::view::Experiment>;
    pub type ExperimentEvents = List<crate::view::ExperimentEvent>;
    pub type Hosts = List<crate::view::Host>;
    pub type Tasks = List<crate::view::AgentTask>;
    pub type PipelineTemplates = List<crate::view::PipelineTemplate>;
    pub type Deployments = List<crate::deployment::PipelineDeployment>;
    pub type RolloutEvents = List<crate::rollout::RolloutEvent>;
    pub type Destinations = List<crate::destination::Destination>;
    pub type LoadSims = List<crate::load::LoadSim>;
    pub type LoadProfiles = List<crate::load::LoadProfileInfo>;
    pub type BootstrapTokens = List<crate::credentials::BootstrapTokenView>;
    pub type HostCredentials = List<crate::credentials::HostCredentialView>;
}

bodies! {
    crate::problem::Problem,
    crate::version::ServerVersion,
    crate::view::Whoami,
    // user API: documents in
    crate::resource::ExperimentDocument,
    crate::resource::PipelineTemplateDocument,
    crate::deployment::PipelineDeploymentDocument,
    crate::destination::DestinationDocument,
    crate::load::LoadSimRequest,
    crate::apply::ApplyBody,
    crate::credentials::NewBootstrapToken,
    // user API: views out
    crate::view::Experiment,
    crate::report::ExperimentReport,
    crate::view::Host,
    crate::view::PipelineTemplate,
    crate::view::PipelineValidation,
    crate::deployment::PipelineDeployment,
    crate::deployment::PromotionResult,
    crate::destination::Destination,
    crate::load::LoadSim,
    crate::apply::PlanEntry,
    crate::credentials::BootstrapTokenView,
    crate::credentials::HostCredentialView,
    lists::Experiments,
    lists::ExperimentEvents,
    lists::Hosts,
    lists::Tasks,
    lists::PipelineTemplates,
    lists::Deployments,
    lists::RolloutEvents,
    lists::Destinations,
    lists::LoadSims,
    lists::LoadProfiles,
    lists::BootstrapTokens,
    lists::HostCredentials,
    // agent API
    crate::credentials::EnrollRequest,
    crate::credentials::Enrollment,
    crate::agent::TaskBatch,
    crate::agent::TaskOutcome,
    crate::agent::HostStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_is_a_component_and_every_reference_resolves() {
        let components = components();
        assert!(components.contains_key("ExperimentDocument"));
        assert!(
            components.contains_key("ExperimentList"),
            "{:?}",
            components.keys()
        );
        // schemars numbers a second type of the same name (`Destination2`): each
        // type gets a name of its own instead.
        let numbered: Vec<&String> = components
            .keys()
            .filter(|k| k.ends_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert!(numbered.is_empty(), "{numbered:?}");
        let text = serde_json::to_string(&components).unwrap();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap();
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a reference outside the components: {target}"));
            assert!(components.contains_key(name), "{target} does not resolve");
        }
    }
}
