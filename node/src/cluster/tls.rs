//! QUIC endpoint configuration: TLS 1.3, in one of two modes.
//!
//! - **Cluster secret** (default): a self-signed certificate generated at start.
//!   Certificates are not how peers trust each other then: the cluster secret is (see
//!   [`super::auth`]), proven over each session's exported keying material. The dialer
//!   accepts any certificate, but still checks the handshake signature, so the TLS
//!   session (and its exporter) is bound to the key that made it.
//! - **Cluster CA** (`--cluster-ca`, `--cluster-cert`, `--cluster-key`): mutual TLS. Both
//!   sides present a certificate and require the other's to chain to the cluster CA; a
//!   peer without one fails the handshake. The CA is the cluster's own, so any
//!   certificate it signed is a member: the name in it is not checked. With a cluster
//!   secret as well, peers must pass both.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::config::ClusterCa;

/// ALPN of the peer protocol.
pub const ALPN: &[u8] = b"switchboard-peer/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate; verifies the TLS 1.3 handshake signature with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 is not used between peers".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies that a peer's certificate chains to the cluster CA, whatever name it holds.
#[derive(Debug)]
struct ClusterCaCertificate(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ClusterCaCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and validity dates) before the name, so a name error
        // means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read certificates from {}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// The rustls configurations of both sides, for the mode `ca` selects.
fn tls_configs(
    ca: Option<&ClusterCa>,
) -> anyhow::Result<(rustls::ServerConfig, rustls::ClientConfig)> {
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let Some(ca) = ca else {
        let cert = rcgen::generate_simple_self_signed(vec!["switchboard".to_owned()])
            .context("generating the peer certificate")?;
        let cert_der = CertificateDer::from(cert.cert);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = server
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key)?;
        let client = client
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth();
        return Ok((server, client));
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&ca.ca)? {
        roots
            .add(cert)
            .with_context(|| format!("{} is not a usable CA certificate", ca.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&ca.cert)?;
    let key = PrivateKeyDer::from_pem_file(&ca.key)
        .map_err(|e| anyhow::anyhow!("cannot read the key {}: {e}", ca.key.display()))?;
    let peers =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("building the cluster CA client verifier")?;
    let server = server
        .with_client_cert_verifier(peers)
        .with_single_cert(chain.clone(), key.clone_key())
        .context("--cluster-cert and --cluster-key do not make a usable identity")?;
    let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .context("building the cluster CA server verifier")?;
    let client = client
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCaCertificate(servers)))
        .with_client_auth_cert(chain, key)
        .context("--cluster-cert and --cluster-key do not make a usable identity")?;
    Ok((server, client))
}

/// A QUIC endpoint on `addr` that accepts peers and dials them; `ca` selects the
/// cluster CA mode (see the module header).
pub fn endpoint(
    addr: SocketAddr,
    idle_timeout: Duration,
    ca: Option<&ClusterCa>,
) -> anyhow::Result<quinn::Endpoint> {
    let (mut server, mut client) = tls_configs(ca)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    client.alpn_protocols = vec![ALPN.to_vec()];

    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle_timeout.try_into()?))
        .keep_alive_interval(Some(Duration::from_millis(500)))
        // The control stream plus one stream per Raft RPC in flight; and the one data
        // stream of forwards each side opens (a second would wait: bounded).
        .max_concurrent_bidi_streams(256u32.into())
        .max_concurrent_uni_streams(1u32.into());
    let transport = Arc::new(transport);

    let mut server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    server_config.transport_config(transport.clone());
    let mut client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client_config.transport_config(transport);

    let mut endpoint = quinn::Endpoint::server(server_config, addr)
        .with_context(|| format!("cannot bind --peer-listen {addr} (UDP)"))?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}
