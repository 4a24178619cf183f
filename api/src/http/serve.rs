//! The HTTP server loop: HTTP/1.1 connections, one task each, with graceful
//! shutdown.
//!
//! An API process holds one open connection per agent (its long-poll), so what a
//! connection costs at rest is what 10,000 agents cost. `axum::serve` detects the
//! protocol of every connection (HTTP/1 or HTTP/2) and keeps room for both; this
//! loop serves HTTP/1.1 only — what agents, the CLI and Prometheus speak over plain
//! HTTP — and measured about half the memory per idle connection
//! (see BENCHMARKS.md). WebSocket upgrades (the event stream) still work.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `router` on `listener` until `shutdown` turns true; then stops accepting,
/// lets every connection finish its request in flight, and returns when all are
/// closed.
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    // Each connection holds a receiver; when all are dropped, every connection is done.
    let (closed_tx, closed_rx) = watch::channel(());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, typically: wait for some to close.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut shutdown = shutdown.clone();
        let closed = closed_rx.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let stopping = tokio::select! {
                _ = connection.as_mut() => false,
                () = stopped(&mut shutdown) => true,
            };
            if stopping {
                // Finish the request in flight (long-polls answer at once), then close.
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
            drop(closed);
        });
    }
    drop(closed_rx);
    closed_tx.closed().await;
}

/// Returns once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
