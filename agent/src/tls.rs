//! HTTPS for the agent's clients (the api, the Pushgateway): rustls with ring, the
//! one crypto provider of the process (kube uses it too), trusting either the
//! machine's roots or only a private CA given by file (`--ca-file`).

use std::path::{Path, PathBuf};

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {} holds no PEM certificate: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
}

/// Makes ring the process's rustls crypto provider; again is a no-op.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder that trusts only the certificates in `ca_file` when given.
pub fn client_builder(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    install_crypto_provider();
    let builder = reqwest::Client::builder();
    let Some(path) = ca_file else {
        return Ok(builder);
    };
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TlsError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            path: path.to_path_buf(),
            detail: "no certificate found".into(),
        });
    }
    Ok(builder.tls_certs_only(certs))
}
