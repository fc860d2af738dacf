//! TLS for the AMQP listeners (`--tls-listen`, RabbitMQ's 5671) and the management API
//! (`--http-tls-cert`): the rustls server configurations made from PEM files, with ring
//! as the crypto provider (no OpenSSL).
//! A file that is missing or holds no usable certificate or key is a start-up error
//! naming it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

fn bad(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{}: {why}", path.display()))
}

/// The certificates in a PEM file (at least one).
fn certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The server's TLS configuration: its certificate chain and key, and, with `ca`, the
/// CA its clients' certificates must chain to (required when `verify_peer`, checked when
/// offered otherwise).
///
/// The CA's certificates are also sent after the chain (those not already in it), as
/// RabbitMQ sends its `cacertfile`: a client that lacks an intermediate finds it there,
/// and one that does not trust the root is told so in the same words by its library.
pub fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    verify_peer: bool,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let mut chain = certificates(cert)?;
    if let Some(ca) = ca {
        for c in certificates(ca)? {
            if !chain.contains(&c) {
                chain.push(c);
            }
        }
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| bad(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if verify_peer {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| bad(ca, e))?)
        }
        None if verify_peer => {
            return Err(io::Error::other(
                "--tls-verify-peer needs --tls-ca (the CA client certificates chain to)",
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| bad(cert, format!("certificate and key do not go together: {e}")))?;
    Ok(Arc::new(config))
}

/// The management API's TLS configuration (HTTPS): its certificate chain and key, no
/// client certificates, and `http/1.1` offered by ALPN (the only HTTP it speaks).
pub fn https_config(cert: &Path, key: &Path) -> io::Result<tokio_rustls::TlsAcceptor> {
    let mut config = Arc::unwrap_or_clone(server_config(cert, key, None, false)?);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
