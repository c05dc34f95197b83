//! TLS for the WebSocket port (`--tls-cert/--tls-key`, wss://) and the admin port
//! (`--admin-tls-cert/--admin-tls-key`): rustls with the ring provider, TLS 1.3 and 1.2.
//!
//! The certificate is served through a resolver that [`ServerTls::reload`] updates in
//! place (SIGHUP): connections already established keep their session, new handshakes
//! get the new certificate, and a reload that fails keeps the old one.

use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsFiles;
use crate::sync::{read, write};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("cannot read the certificate chain {path}: {reason}")]
    Certificate { path: String, reason: String },
    /// The key file is unreadable or holds no PEM private key.
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    /// rustls refused the key or the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the chain and key named by `files`.
pub fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate {
        path: files.cert.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.display().to_string(),
        reason: e.to_string(),
    })?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Serves the current certificate.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read(&self.0).clone())
    }
}

/// A TLS server configuration whose certificate can be reloaded.
#[derive(Debug, Clone)]
pub struct ServerTls {
    files: TlsFiles,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Loads `files`; `alpn` lists the application protocols offered.
    pub fn load(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(certified_key(files)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            files: files.clone(),
            resolver,
            config: Arc::new(config),
        })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Re-reads the certificate and key; on failure the old ones stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.files)?;
        *write(&self.resolver.0) = Arc::new(key);
        Ok(())
    }
}
