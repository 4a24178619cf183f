use anyhow::Context as _;
use clap::Parser;
use phoenix_reconciler::ReconcilerConfig;
use phoenix_reconciler::metrics::Metrics;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = ReconcilerConfig::parse();
    let telemetry = phoenix_telemetry::init("phoenix-reconciler", &config.telemetry, "info")?;
    config.check_required()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for /metrics (a second reconciler on this machine needs \
                 its own --listen, PHOENIX_RECONCILER_LISTEN, e.g. 127.0.0.1:0)",
                config.listen
            )
        })?;
    tracing::info!(address = %listener.local_addr()?, "metrics on /metrics");
    let server = tokio::spawn(phoenix_reconciler::serve_metrics(
        listener,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let ran = phoenix_reconciler::run(config, metrics, stop_rx).await;
    telemetry.shutdown().await;
    ran?;
    server.await??;
    Ok(())
}
