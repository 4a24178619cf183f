//! Reversible migrations on a real Postgres: every migration goes down and up
//! again on a database holding data from every feature, the schema after each
//! down step is exactly the schema that step's up found, and the data a step does
//! not declare lost (`-- lossy:`) is byte for byte what it was (a checksum per
//! table). Also: a database migrated by the simple (pre-pair) files of v0.1.0 is
//! current for this build, `phoenix-api migrate` refuses a lossy down without
//! `--force`, and servers with `--no-migrate` refuse a schema behind theirs but
//! run on one ahead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, api_config, eventually, fresh_database};
use phoenix_e2e::pgtools::{data_checksums, schema_fingerprint};
use phoenix_storage::schema::{self, Standing};
use phoenix_storage::{PgPool, experiments, results};
use phoenix_wire::report::{ExperimentReport, Verdict};
use phoenix_wire::view::Phase;
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(60);

/// The tables each feature writes; every one must hold rows before the round trips.
const FEATURE_TABLES: &[&str] = &[
    "pipeline_templates",
    "experiments",
    "experiment_events",
    "experiment_results",
    "hosts",
    "host_collectors",
    "agent_tasks",
    "load_runs",
    "host_loads",
    "pipeline_deployments",
    "pipeline_deployment_revisions",
    "bootstrap_tokens",
    "host_credentials",
    "collector_configs",
    "deployment_rollouts",
    "deployment_events",
];

fn experiment_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {name}, labels: {{team: upgrades}}}}
spec:
  hosts: {{selector: {{role: web}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: "0.2"}}}}
  warmup: 0s
  duration: 1h
  criticalProcesses: [nginx]
  load: {{profile: realistic, processes: 5}}
"#
    )
}

/// A full status report from a host, with a collector and a load run in it.
async fn report_host(stack: &Stack, host: &str) {
    let now = Utc::now();
    let status = serde_json::json!({
        "labels": {"role": "web"},
        "agentVersion": "0.1.0",
        "maxLoadProcesses": 100,
        "collectors": [{
            "collectorId": "standing-web.standing", "owner": "standing-web",
            "variant": "standing", "pipeline": "process-topk", "configHash": "0123456789abcdef",
            "pid": 4242, "health": "healthy", "restarts": 1, "cpuSeconds": 1.5,
            "rssBytes": 1048576, "lastError": "a line the collector printed"
        }],
        "load": [{
            "runId": "run.burst", "owner": "burst", "profile": "realistic",
            "specHash": "fedcba9876543210", "state": "running", "liveProcesses": 3,
            "spawnedTotal": 7, "startedAt": now, "expiresAt": now + chrono::Duration::minutes(10)
        }]
    });
    let credential = stack.host_credential(host).await;
    let response = stack
        .request(
            Method::PUT,
            &format!("/agent/v1/hosts/{host}/status"),
            &credential,
        )
        .json(&status)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "status of {host}");
}

async fn send(stack: &Stack, method: Method, path: &str, yaml: &str) {
    let response = stack
        .request(method, path, OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "{path}: {status} {}",
        response.text().await.unwrap_or_default()
    );
}

fn deployment_yaml(threshold: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {{name: standing-web}}
spec:
  hosts: {{names: [web-2]}}
  pipeline: process-topk
  vars: {{cpu_threshold: "{threshold}"}}
"#
    )
}

/// Fills a stack's database through the api and the reconciler (no agents, so
/// tasks stay open): hosts with collectors and load, two experiments (one
/// completed with a report), a deployment with three revisions (one rolled back),
/// a load run, and the events and tasks all of that makes. Returns the database URL.
async fn populate() -> String {
    let stack = Stack::start().await;
    report_host(&stack, "web-1").await;
    report_host(&stack, "web-2").await;
    stack.create_experiment(&experiment_yaml("measured")).await;
    stack.create_experiment(&experiment_yaml("waiting")).await;
    for threshold in ["0.1", "0.2", "0.3"] {
        send(
            &stack,
            Method::POST,
            "/api/v1/deployments",
            &deployment_yaml(threshold),
        )
        .await;
    }
    send(
        &stack,
        Method::POST,
        "/api/v1/deployments/standing-web/rollback",
        "",
    )
    .await;
    let response = stack
        .request(Method::POST, "/api/v1/loadsims", OPERATOR_TOKEN)
        .json(&serde_json::json!({
            "name": "burst", "hosts": {"names": ["web-1"]}, "profile": "realistic",
            "processes": 10, "duration": "10m"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    // The reconciler deploys both experiments: tasks for collectors, load and the
    // standing pipeline.
    let pool = stack.pool.clone();
    eventually("collector and load tasks", WAIT, || {
        let pool = pool.clone();
        async move {
            let kinds: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT kind FROM agent_tasks ORDER BY kind")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            (kinds == ["collector", "load"]).then_some(())
        }
    })
    .await;
    // The deployment's roll-outs record their steps.
    let pool = stack.pool.clone();
    eventually("roll-out steps", WAIT, || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deployment_events")
                .fetch_one(&pool)
                .await
                .unwrap();
            (n > 0).then_some(())
        }
    })
    .await;
    let database_url = stack.database_url.clone();
    stack.shutdown().await;

    // The analysis, stood in for: a window, a report, and `completed`.
    let pool = phoenix_storage::connect(&database_url, 2).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let end = Utc::now();
    let start = end - chrono::Duration::hours(1);
    results::begin(&mut conn, "measured", start, end)
        .await
        .unwrap();
    let report = ExperimentReport {
        experiment: "measured".into(),
        window_start: start,
        window_end: end,
        analyzed_at: end,
        verdict: Verdict::Pass,
        criteria: Vec::new(),
        baseline: Default::default(),
        candidate: Default::default(),
        hosts: BTreeMap::new(),
        cpu_test: None,
        memory_test: None,
        price_per_million_dpm: 0.5,
        error_control: None,
        fidelity: None,
        evidence: None,
        ignored_hosts: Vec::new(),
        incidents: Vec::new(),
    };
    results::store(&mut conn, &report).await.unwrap();
    let moved = experiments::transition(
        &mut conn,
        "measured",
        Phase::Deploying,
        Phase::Completed,
        "test: analysis stood in for",
        None,
    )
    .await
    .unwrap();
    assert!(moved, "measured was not deploying");
    drop(conn);
    pool.close().await;
    database_url
}

/// The schema after each version, reached by going up one step at a time.
async fn fingerprints_going_up() -> BTreeMap<i64, String> {
    let url = fresh_database().await;
    let pool = phoenix_storage::connect(&url, 1).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut fingerprints = BTreeMap::new();
    // Up to 0: sqlx's bookkeeping table and nothing else, as at every later step.
    schema::up(&mut conn, Some(0), |_| {}).await.unwrap();
    fingerprints.insert(0, schema_fingerprint(&url));
    for step in schema::steps() {
        schema::up(&mut conn, Some(step.version), |_| {})
            .await
            .unwrap();
        fingerprints.insert(step.version, schema_fingerprint(&url));
    }
    fingerprints
}

/// Tables rebuilt from another on the way up, so lost with it: (derived, source).
/// Collector config bodies are a content-addressed store of what tasks name.
const DERIVED_TABLES: &[(&str, &str)] = &[("collector_configs", "agent_tasks")];

/// Tables named by the `-- lossy:` markers of the steps above `to` (and the tables
/// derived from them).
fn lossy_tables_above(to: i64) -> BTreeSet<String> {
    let mut lossy: BTreeSet<String> = schema::steps()
        .iter()
        .filter(|s| s.version > to)
        .flat_map(|s| s.lossy())
        .map(|name| name.split('.').next().unwrap().to_string())
        .collect();
    for (derived, source) in DERIVED_TABLES {
        if lossy.contains(*source) {
            lossy.insert(derived.to_string());
        }
    }
    lossy
}

async fn current_version(pool: &PgPool) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    schema::status(&mut conn).await.unwrap().current
}

#[tokio::test(flavor = "multi_thread")]
async fn every_migration_goes_down_and_up_again_keeping_what_it_should() {
    let fingerprints = fingerprints_going_up().await;
    let latest = schema::latest();
    let url = populate().await;
    let pool = phoenix_storage::connect(&url, 2).await.unwrap();
    assert_eq!(current_version(&pool).await, latest);
    assert_eq!(
        schema_fingerprint(&url),
        fingerprints[&latest],
        "the servers' schema differs from the migrations'"
    );
    let mut before = data_checksums(&pool).await;
    for table in FEATURE_TABLES {
        let rows = before.get(*table).map_or(0, |(rows, _)| *rows);
        assert!(rows > 0, "{table} holds no data to keep: {before:?}");
    }
    let revisions = before["pipeline_deployment_revisions"].0;
    assert!(revisions >= 3, "{revisions} revisions");

    // Down to each version and up again, from the top: down to the one below the
    // latest and back, then to the one below that and back, …, then to 0 and back.
    // (Versions are the migrations' own, which need not be consecutive.)
    let below_latest: Vec<i64> = std::iter::once(0)
        .chain(schema::steps().iter().map(|s| s.version))
        .filter(|v| *v < latest)
        .collect();
    for to in below_latest.into_iter().rev() {
        let mut conn = pool.acquire().await.unwrap();
        let refused = schema::down(&mut conn, to, false, |_| {}).await;
        let lossy = lossy_tables_above(to);
        assert_eq!(
            refused.is_err(),
            !lossy.is_empty(),
            "down to {to} without --force: {refused:?}"
        );
        if !lossy.is_empty() {
            assert_eq!(
                current_version(&pool).await,
                latest,
                "a refusal changed nothing"
            );
            schema::down(&mut conn, to, true, |_| {}).await.unwrap();
        }
        assert_eq!(current_version(&pool).await, to);
        assert_eq!(
            schema_fingerprint(&url),
            fingerprints[&to],
            "the schema after going down to {to} is not the schema of version {to}"
        );
        let moved = schema::up(&mut conn, None, |_| {}).await.unwrap();
        let above = schema::steps().iter().filter(|s| s.version > to).count();
        assert_eq!(moved.len(), above);
        drop(conn);
        assert_eq!(
            schema_fingerprint(&url),
            fingerprints[&latest],
            "the schema after going down to {to} and up again"
        );
        let after = data_checksums(&pool).await;
        let mut rows_kept = 0;
        for (table, sum) in &before {
            if lossy.contains(table) {
                continue;
            }
            rows_kept += sum.0;
            assert_eq!(
                after.get(table),
                Some(sum),
                "{table} changed going down to {to} and up again (it is not lossy there)"
            );
        }
        if to > 0 {
            assert!(rows_kept > 0, "going down to {to} kept nothing to compare");
        }
        before = after;
    }
    // Down to 0 loses everything it declares, and the tables are back, empty.
    for table in FEATURE_TABLES {
        assert_eq!(before[*table].0, 0, "{table} after going down to 0 and up");
    }
    pool.close().await;
}

/// v0.1.0 applied `NNNN_name.sql` files with sqlx's own migrator; this build's
/// pairs must find that database current (same versions, same checksums).
#[tokio::test(flavor = "multi_thread")]
async fn a_database_migrated_by_the_simple_files_of_v0_1_0_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // v0.1.0 had 0001…0008, as single files.
        let Some(stem) = name.strip_suffix(".up.sql") else {
            continue;
        };
        if stem[..4].parse::<i64>().unwrap() > 8 {
            continue;
        }
        std::fs::copy(&path, dir.path().join(format!("{stem}.sql"))).unwrap();
    }
    let url = fresh_database().await;
    let pool = phoenix_storage::connect(&url, 1).await.unwrap();
    let old = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    assert_eq!(old.iter().count(), 8);
    old.run(&pool).await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let status = schema::status(&mut conn).await.unwrap();
    assert!(status.problem().is_none(), "{:?}", status.problem());
    if schema::latest() == 8 {
        assert_eq!(status.standing, Standing::Current);
    } else {
        assert_eq!(status.standing, Standing::Behind);
    }
    drop(conn);
    let prepared = schema::prepare(&pool, "phoenix-api", schema::OnStart::Migrate)
        .await
        .unwrap();
    assert_eq!(prepared.standing, Standing::Current);
    assert_eq!(prepared.current, schema::latest());
    // And it goes down like any other: 0008 is the first pair's down step.
    let mut conn = pool.acquire().await.unwrap();
    schema::down(&mut conn, 7, true, |_| {}).await.unwrap();
    schema::up(&mut conn, None, |_| {}).await.unwrap();
}

fn migrate_cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(binary("phoenix-api"))
        .arg("migrate")
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_migrate_command_shows_moves_and_refuses_loss_without_force() {
    let url = fresh_database().await;
    let latest = schema::latest();
    let (ok, out, err) = migrate_cli(&url, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("schema at version 0"), "{out}");
    let eighth = out
        .lines()
        .find(|l| l.starts_with("0008"))
        .unwrap_or_default();
    assert!(eighth.contains("template variables"), "{out}");
    assert!(eighth.contains(" no "), "{out}");
    assert!(
        eighth.ends_with("drops pipeline_templates.variables"),
        "{out}"
    );

    let (ok, out, err) = migrate_cli(&url, &["up", "--to", "6"]);
    assert!(ok, "{err}");
    assert!(out.contains("applied  0006 fleet scale"), "{out}");
    assert!(!out.contains("0007"), "{out}");
    let (ok, out, _) = migrate_cli(&url, &["up"]);
    assert!(ok);
    assert!(
        out.contains(&format!("schema at version {latest}")),
        "{out}"
    );
    assert!(out.contains("up to date"), "{out}");
    // `up` to the top seeds the built-in catalog, as a server's start does.
    let pool = phoenix_storage::connect(&url, 1).await.unwrap();
    let builtin: i64 = sqlx::query_scalar("SELECT count(*) FROM pipeline_templates WHERE builtin")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(builtin > 0);

    let (ok, _, err) = migrate_cli(&url, &["down", "--to", "5"]);
    assert!(!ok);
    assert!(
        err.contains("0008 drops pipeline_templates.variables"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(current_version(&pool).await, latest);

    let (ok, _, err) = migrate_cli(&url, &["down", "--to", "4242"]);
    assert!(!ok);
    assert!(err.contains("--to 4242 is not a migration"), "{err}");

    let (ok, out, err) = migrate_cli(&url, &["down", "--to", "5", "--force"]);
    assert!(ok, "{err}");
    assert!(out.contains("reverted 0006 fleet scale"), "{out}");
    let (ok, out, _) = migrate_cli(&url, &["status", "-o", "json"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["current"], 5);
    assert_eq!(status["latest"], latest);
    assert_eq!(status["standing"], "behind");
    let eighth = &status["migrations"][7];
    assert_eq!(eighth["version"], 8);
    assert_eq!(eighth["applied"], false);
    assert_eq!(eighth["lossy"][0], "pipeline_templates.variables");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_with_no_migrate_refuse_a_schema_behind_and_run_on_one_ahead() {
    let url = fresh_database().await;
    let pool = phoenix_storage::connect(&url, 2).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    schema::up(&mut conn, Some(6), |_| {}).await.unwrap();
    let latest = schema::latest();

    let mut api = api_config(&url);
    api.no_migrate = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let err = phoenix_api::serve(api.clone(), listener, stop_rx.clone())
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "the schema is at version 6 and this phoenix-api needs {latest}"
        )),
        "{text}"
    );
    assert!(text.contains("phoenix-api migrate up"), "{text}");

    let mut reconciler = phoenix_reconciler::ReconcilerConfig::new(url.clone());
    reconciler.no_migrate = true;
    let err = phoenix_reconciler::run(
        reconciler.clone(),
        phoenix_reconciler::metrics::Metrics::new(),
        stop_rx.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("this phoenix-reconciler needs"),
        "{err:#}"
    );
    assert_eq!(current_version(&pool).await, 6, "nothing migrated");

    // A newer release's migration applied (what expand-and-contract runs older
    // replicas against): the servers start, and leave it alone.
    schema::up(&mut conn, None, |_| {}).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'a newer release', TRUE, '\\x00', 0)",
    )
    .bind(latest + 1)
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(phoenix_api::serve(api, listener, stop_rx));
    let http = phoenix_e2e::harness::http_client();
    eventually("the api on a newer schema", WAIT, || {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{address}/readyz"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(current_version(&pool).await, latest + 1);
    // Going down across it needs that newer release's binary.
    let (ok, _, err) = migrate_cli(&url, &["down", "--to", "6", "--force"]);
    assert!(!ok);
    assert!(err.contains("belong to a newer release"), "{err}");
    pool.close().await;
}
