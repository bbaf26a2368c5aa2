//! TLS with rustls (ring provider): the data listener's server config, with
//! ALPN h2 / http/1.1 and certificates re-read when their files change
//! (cert-manager rotates them) without touching open connections; and the
//! client configs for upstream TLS (system roots or a CA file, SNI
//! override, optional client certificate for mTLS).
//!
//! This module reads PEM files and builds configs; it must not accept
//! connections or decide routing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ListenerTls, UpstreamTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Serves the current certificate; [`CertStore::reload`] swaps it.
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

impl CertStore {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertStore>, TlsError> {
        let key = certified_key(cert_file, key_file)?;
        Ok(Arc::new(CertStore {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// Re-reads both files; a broken pair keeps the running certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    let signing = default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Pem { path: key_file.to_path_buf(), message: e.to_string() })?;
    Ok(CertifiedKey::new(certs, signing))
}

/// A PEM file: a regular file of at most 1 MiB, like every key file.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::config::read_small_file(path).map_err(|message| TlsError::Pem { path: path.to_path_buf(), message })
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| TlsError::Pem { path: path.to_path_buf(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), message: "no certificate in PEM".to_string() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem { path: path.to_path_buf(), message: e.to_string() })
}

/// The data listener's certificates and server config from `tls:`: what
/// `App::start` loads, and what `fusebox check` tries (`app::preflight`).
pub fn listener(tls: &ListenerTls) -> Result<(Arc<CertStore>, Arc<ServerConfig>), TlsError> {
    let certs = CertStore::load(&tls.cert_file, &tls.key_file)?;
    let server = server_config(certs.clone())?;
    Ok((certs, server))
}

/// The admin listener's certificate store and config: like the data
/// listener's, with ALPN http/1.1 only (the state WebSocket is an
/// HTTP/1.1 upgrade; `wss://` clients offer nothing else).
pub fn admin_listener(tls: &ListenerTls) -> Result<(Arc<CertStore>, Arc<ServerConfig>), TlsError> {
    let certs = CertStore::load(&tls.cert_file, &tls.key_file)?;
    let mut server = (*server_config(certs.clone())?).clone();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((certs, Arc::new(server)))
}

// === impl TlsError ===

impl TlsError {
    /// The file the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. } | TlsError::Pem { path, .. } => Some(path),
            TlsError::Rustls(_) => None,
        }
    }
}

/// The data listener's config: TLS 1.2 and 1.3 with rustls' safe default
/// suites, ALPN h2 then http/1.1.
pub fn server_config(certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The system's trusted roots, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            Arc::new(roots)
        })
        .clone()
}

/// A client config for one upstream. ALPN (h2 or http/1.1) is set by the
/// connector (`hyper-rustls` refuses a config that already has it).
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, TlsError> {
    let roots = match &tls.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Pem { path: path.clone(), message: e.to_string() })?;
            }
            Arc::new(roots)
        }
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    Ok(match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?,
        _ => builder.with_no_client_auth(),
    })
}

/// A client config that trusts no server: for an upstream whose TLS
/// settings could not be loaded, so its calls fail visibly.
pub fn trust_nothing() -> ClientConfig {
    ClientConfig::builder().with_root_certificates(RootCertStore::empty()).with_no_client_auth()
}
