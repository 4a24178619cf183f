//! Types that cross Phoenix process boundaries, and nothing that does I/O.
//!
//! - [`resource`]: the user-facing resource documents (`Experiment`), how they are
//!   parsed from JSON or YAML, and how they are validated field by field.
//! - [`names`]: validated names (experiments, hosts, labels) and label selectors.
//! - [`duration`]: human durations (`30s`, `1m`, `1h30m`) as they appear in documents.
//! - [`view`]: what the user API returns (experiments, events, hosts).
//! - [`events`]: the event stream's messages (experiment, host and task events, exactly
//!   as the database triggers announce them) and the filter a subscriber selects with.
//! - [`agent`]: the agent protocol: tasks, task outcomes, host status, collector specs
//!   and their config hash.
//! - [`credentials`]: agent identity: bootstrap tokens, host credentials, their text
//!   form, enrollment and the admin views.
//! - [`problem`]: `application/problem+json` error bodies shared by the API and clients.
//! - [`render`]: experiment + template + host → the collector spec a host runs
//!   (and deployment + template + host → its standing collector).
//! - [`deployment`]: pipeline deployments (standing pipelines for a host selector),
//!   their revisions, and the answer to an experiment's promote or rollback.
//! - [`rollout`]: staged roll-outs of a deployment's revisions: the spec's
//!   `rollout` section, a roll-out's progress and its steps (events).
//! - [`destination`]: the user's backends (OTLP gRPC/HTTP, Prometheus remote write)
//!   an admin declares, with credentials by reference, and the exporters they become.
//! - [`import`]: a user's own collector config turned into a pipeline template
//!   (`phoenix pipeline import`), with what was changed.
//! - [`report`]: an experiment's KPIs per variant and host, and its verdict.
//! - [`policy`]: the template policy: what a collector config may contain (components,
//!   lookups, files, listeners, destinations), checked by the api and again by the agent.
//! - [`variables`]: typed template variables (duration, number, integer, regex,
//!   identifier list): declarations, and values parsed by type.
//! - [`fuzzing`]: what the fuzz targets in `fuzz/` check on each input (shared with
//!   the regression test that replays their past crashes).
//! - [`schema`]: the JSON Schemas of the document kinds and the field reference
//!   generated from them.
//! - [`version`]: what `GET /version` answers (build and body limit).
//! - [`openapi`] (feature `openapi`): the schemas of the api's bodies, by name, for
//!   its OpenAPI document.
//! - [`load`]: load simulation: profiles, the run spec a task carries, what agents
//!   report about runs, and the loadsim requests and views of the user API.
//!
//! The api, the reconciler, the agent and the CLI all depend on this crate; it links
//! neither a database driver nor an HTTP stack.

pub mod agent;
pub mod apply;
pub mod credentials;
pub mod deployment;
pub mod destination;
pub mod duration;
pub mod events;
pub mod fuzzing;
pub mod import;
pub mod load;
pub mod names;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod policy;
pub mod problem;
pub mod render;
pub mod report;
pub mod resource;
pub mod rollout;
pub mod schema;
pub mod variables;
pub mod version;
pub mod view;

/// The `apiVersion` every Phoenix resource document carries.
pub const API_VERSION: &str = "phoenix.dev/v1";
