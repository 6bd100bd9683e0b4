//! TLS for Ironvisor's own connections, shared by the api-server and the node agent:
//!
//! - [`certificates`], [`private_key`]: PEM in, DER out, errors that name what was read;
//! - [`common_name`], [`not_after`]: what a certificate says;
//! - [`ReloadableCertificate`]: a serving certificate swapped in place on renewal;
//! - [`server_config`], [`client_config`]: rustls configurations (ring, HTTP/1.1 ALPN),
//!   with client certificates optional or required.
#![deny(missing_docs)]

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM could not be read.
    #[error("reading the {what}: {reason}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("configuring TLS: {0}")]
    Config(#[from] rustls::Error),
    /// A certificate verifier could not be built.
    #[error("building the certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Every certificate in `pem` (at least one).
pub fn certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::Pem {
            what,
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate in it".into(),
        });
    }
    Ok(chain)
}

/// The private key in `pem`.
pub fn private_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|error| TlsError::Pem {
        what,
        reason: error.to_string(),
    })
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}

/// The validity period (`not_before`, `not_after`) of the first certificate in `pem`, as
/// Unix seconds.
pub fn validity(pem: &str, what: &'static str) -> Result<(i64, i64), TlsError> {
    let der = certificates(pem, what)?.remove(0);
    let (_, certificate) = X509Certificate::from_der(&der).map_err(|error| TlsError::Pem {
        what,
        reason: error.to_string(),
    })?;
    let validity = certificate.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The end of the validity of the first certificate in `pem` (Unix seconds).
pub fn not_after(pem: &str, what: &'static str) -> Result<i64, TlsError> {
    validity(pem, what).map(|(_, until)| until)
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert_pem, "certificate")?;
    let key = private_key(key_pem, "private key")?;
    let signing_key = ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// A certificate and key, replaceable while a server runs: new handshakes get the new one.
#[derive(Debug)]
pub struct ReloadableCertificate {
    current: RwLock<(String, Arc<CertifiedKey>)>,
}

impl ReloadableCertificate {
    /// From the certificate (chain) and key PEM.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new((
                cert_pem.to_string(),
                Arc::new(certified_key(cert_pem, key_pem)?),
            )),
        })
    }

    /// Uses `cert_pem` from now on if it differs from the current one; returns whether it
    /// changed.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<bool, TlsError> {
        let same = self
            .current
            .read()
            .map(|current| current.0 == cert_pem)
            .unwrap_or(false);
        if same {
            return Ok(false);
        }
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        if let Ok(mut current) = self.current.write() {
            *current = (cert_pem.to_string(), key);
        }
        Ok(true)
    }

    /// The current certificate and key, for a client configuration.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.1.clone())
    }
}

impl ResolvesServerCert for ReloadableCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None asked.
    None,
    /// Verified against the CA when presented; connections without one are accepted.
    Optional,
    /// Required and verified against the CA.
    Required,
}

fn roots(ca_pem: &str, what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca_pem, what)? {
        roots.add(certificate)?;
    }
    Ok(roots)
}

/// A server configuration speaking HTTP/1.1 (ALPN), with `serving` as its certificate and
/// client certificates checked against `client_ca_pem` as `auth` says.
pub fn server_config(
    serving: Arc<ReloadableCertificate>,
    client_ca_pem: Option<&str>,
    auth: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (client_ca_pem, auth) {
        (Some(pem), ClientAuth::Optional | ClientAuth::Required) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(pem, "client CA")?),
                provider,
            );
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated().build()?,
                _ => verifier.build()?,
            };
            builder.with_client_cert_verifier(verifier)
        }
        (None, ClientAuth::Required) => {
            return Err(TlsError::Pem {
                what: "client CA",
                reason: "client certificates are required but no CA was given".into(),
            })
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration trusting only `ca_pem`, presenting `cert_pem`/`key_pem`.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca_pem, "server CA")?),
        provider.clone(),
    )
    .build()?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(
            certificates(cert_pem, "client certificate")?,
            private_key(key_pem, "client key")?,
        )?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn self_signed(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn names_and_dates_are_read() {
        let (cert, _) = self_signed("ironvisor-handler");
        let der = certificates(&cert, "cert").unwrap().remove(0);
        assert_eq!(common_name(&der).as_deref(), Some("ironvisor-handler"));
        let (from, until) = validity(&cert, "cert").unwrap();
        assert!(from < until);
    }

    #[test]
    fn the_certificate_is_replaced_only_when_it_changes() {
        let (first, first_key) = self_signed("a.example");
        let (second, second_key) = self_signed("a.example");
        let reloadable = ReloadableCertificate::new(&first, &first_key).unwrap();
        assert!(!reloadable.replace(&first, &first_key).unwrap());
        assert!(reloadable.replace(&second, &second_key).unwrap());
        let config =
            server_config(Arc::new(reloadable), Some(&first), ClientAuth::Required).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn bad_pem_and_missing_ca_are_named() {
        let err = ReloadableCertificate::new("nope", "nope").unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        let (cert, key) = self_signed("a.example");
        let reloadable = Arc::new(ReloadableCertificate::new(&cert, &key).unwrap());
        let err = server_config(reloadable, None, ClientAuth::Required).unwrap_err();
        assert!(err.to_string().contains("no CA"), "{err}");
    }
}
