//! The HTTP server loop: HTTP/1.1 connections (plain, or TLS from a certificate and
//! key file), one task each, with graceful shutdown.
//!
//! An API process holds one open connection per agent (its long-poll), so what a
//! connection costs at rest is what 10,000 agents cost. `axum::serve` detects the
//! protocol of every connection (HTTP/1 or HTTP/2) and keeps room for both; this
//! loop serves HTTP/1.1 only — what agents, the CLI and Prometheus speak — and
//! measured about half the memory per idle connection (see BENCHMARKS.md).
//! WebSocket upgrades (the event stream) still work.
//!
//! Hardening: at most `max_connections` are open (past it, new ones wait in the
//! kernel's backlog); a TLS handshake must finish within [`HANDSHAKE_TIMEOUT`]; a
//! connection that sends no complete request head within [`HEADER_TIMEOUT`] — new,
//! or idle between requests — is closed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// How long a client may take to send a request's head (and to start the next
/// one on a kept-alive connection). Agents send their next long-poll at once.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How connections are accepted.
#[derive(Clone)]
pub struct ServeSettings {
    /// TLS, when the api has a certificate.
    pub tls: Option<TlsAcceptor>,
    pub max_connections: usize,
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key, with ring.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("the TLS certificate {} is not PEM", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate file {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the TLS certificate and key do not make a server identity")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` turns true; then stops accepting,
/// lets every connection finish its request in flight, and returns when all are
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each connection holds a receiver; when all are dropped, every connection is done.
    let (closed_tx, closed_rx) = watch::channel(());
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stopped(&mut shutdown) => break,
        };
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
        let router = router.clone();
        let shutdown = shutdown.clone();
        let closed = closed_rx.clone();
        let tls = settings.tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, router, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, router, shutdown).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
            drop(closed);
        });
    }
    drop(closed_rx);
    closed_tx.closed().await;
}

async fn serve_connection<IO>(io: IO, router: Router, mut shutdown: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
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
}

/// Returns once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
