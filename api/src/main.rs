use clap::Parser;
use phoenix_api::ApiConfig;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = ApiConfig::parse();
    // sqlx's notices ("relation _sqlx_migrations already exists, skipping") are
    // Postgres talking to itself.
    let telemetry = phoenix_telemetry::init(
        "phoenix-api",
        &config.telemetry,
        "info,sqlx::postgres::notice=warn",
    )?;
    if let Some(phoenix_api::config::ApiCommand::Migrate(command)) = config.command.take() {
        // An admin reads the command's own lines; a failure is one line, no backtrace.
        let result = if config.database_url.trim().is_empty() {
            Err(anyhow::anyhow!(
                "--database-url (environment variable DATABASE_URL) is required"
            ))
        } else {
            phoenix_api::migrate::run(&config.database_url, command).await
        };
        if let Err(err) = result {
            eprintln!("phoenix-api migrate: {err:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    config.check_required()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let served = phoenix_api::serve(config, listener, stop_rx).await;
    telemetry.shutdown().await;
    served
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
