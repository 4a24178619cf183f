//! The end-to-end test kit: builds and locates the project's binaries, and (in
//! `harness`) starts a real stack on loopback for a test, on a private Postgres
//! cluster (`throwaway`) unless `DATABASE_URL` is set; `measurement` adds
//! Prometheus and a Pushgateway, `backend` a collector standing in for the user's
//! own backend, `pgtools` pg_dump, pg_restore and checksums of a database, `kube` a
//! real Kubernetes control plane. Test infrastructure lives here, never in the
//! crates the production binaries are built from.
//!
//! Binaries under test: `phoenix-agent` (from the agent crate) and
//! `stand-in-collector` (this crate's `src/bin`), a real long-running program that
//! behaves like the collector where the supervisor can see it (config flag, health
//! endpoint, exit codes), for tests that do not need the real OpenTelemetry Collector.

pub mod backend;
pub mod bins;
pub mod harness;
pub mod image;
pub mod kube;
pub mod kubelet;
pub mod measurement;
pub mod netns;
pub mod pgtools;
pub mod throwaway;
