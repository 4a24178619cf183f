//! HTTPS and WSS for the CLI: rustls with ring (the process's one crypto
//! provider), trusting the machine's roots, or only a private CA given by file
//! (`--ca-file`, `PHOENIX_CA_FILE`, `caFile`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Makes ring the process's rustls crypto provider; again is a no-op.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file; an error names the file.
fn read_ca(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the CA file {}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("the CA file {} is not PEM: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "the CA file {} holds no certificate",
        path.display()
    );
    Ok(certs)
}

/// A reqwest builder that trusts only `ca_file`'s certificates when given.
pub fn client_builder(ca_file: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    install_crypto_provider();
    let builder = reqwest::Client::builder();
    let Some(path) = ca_file else {
        return Ok(builder);
    };
    let certs = read_ca(path)?
        .into_iter()
        .map(|der| reqwest::Certificate::from_der(&der))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("a certificate of {} is not usable", path.display()))?;
    Ok(builder.tls_certs_only(certs))
}

/// The rustls config of a `wss://` connection: `None` trusts the machine's roots.
pub fn websocket_config(
    ca_file: Option<&Path>,
) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    install_crypto_provider();
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_ca(path)? {
        roots
            .add(cert)
            .with_context(|| format!("a certificate of {} is not a CA", path.display()))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}
