//! The api-server's own certificate authority and serving certificate: generated, checked
//! for expiry and renewed here (pure functions; `cert_store` keeps them in a Secret).
//!
//! The CA signs only the serving certificate. kube-apiserver trusts it through the
//! `caBundle` of the webhook configurations and the APIService, which `ca_bundle` keeps
//! equal to [`Certificates::bundle_pem`]: the current CA, followed by the previous one for a
//! while after the CA itself was renewed, so that a replica still serving a certificate of
//! the old CA is trusted until it reloads.
//!
//! The same CA issues the node link's two certificates: the node agents' server
//! certificate (for [`NODE_LINK_SERVER_NAME`]) and the api-server's client certificate
//! ([`NODE_LINK_CLIENT_NAME`]); both sides check the other chains to this CA.

use std::time::Duration;

use ironvisor_crds::cluster::{NODE_LINK_CLIENT_NAME, NODE_LINK_SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// Common name of the CA.
pub const CA_COMMON_NAME: &str = "ironvisor-apiserver-ca";

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or the key.
    #[error("generating the {what}: {source}")]
    Generate {
        /// CA or serving certificate.
        what: &'static str,
        /// The error.
        source: rcgen::Error,
    },
    /// A stored PEM is not a certificate.
    #[error("the stored {what} is not a PEM certificate: {reason}")]
    Parse {
        /// Which one.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// How long certificates live and how early they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Lifetime of a new CA.
    pub authority: Duration,
    /// Lifetime of a new serving certificate.
    pub serving: Duration,
    /// Renew a certificate when it has less than this fraction of its lifetime left
    /// (in percent).
    pub renew_at_percent_left: u8,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            authority: Duration::from_secs(5 * 365 * 24 * 3600),
            serving: Duration::from_secs(365 * 24 * 3600),
            renew_at_percent_left: 20,
        }
    }
}

/// The CA and the serving certificate, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificates {
    /// The current CA certificate.
    pub ca_pem: String,
    /// The current CA's private key.
    pub ca_key_pem: String,
    /// The CA certificate that was current before the last CA renewal, still trusted.
    pub previous_ca_pem: Option<String>,
    /// The serving certificate, signed by the current CA.
    pub serving_pem: String,
    /// The serving certificate's private key.
    pub serving_key_pem: String,
    /// The DNS names the serving certificate is for.
    pub dns_names: Vec<String>,
    /// The node agents' link certificate (server side of the node link).
    pub node_server_pem: String,
    /// Its key.
    pub node_server_key_pem: String,
    /// The api-server's client certificate on the node link.
    pub node_client_pem: String,
    /// Its key.
    pub node_client_key_pem: String,
}

/// What is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing.
    None,
    /// A new serving certificate from the current CA.
    Serving,
    /// A new CA (the current one becomes the previous) and a new serving certificate.
    Authority,
}

impl Certificates {
    /// A new CA and serving certificate for `dns_names`.
    pub fn generate(
        dns_names: &[String],
        now: OffsetDateTime,
        lifetimes: Lifetimes,
    ) -> Result<Self, CertError> {
        let ca_key = KeyPair::generate().map_err(|source| CertError::Generate {
            what: "CA key",
            source,
        })?;
        let ca = authority_params(now, lifetimes.authority)
            .self_signed(&ca_key)
            .map_err(|source| CertError::Generate { what: "CA", source })?;
        let mut certificates = Self {
            ca_pem: ca.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            previous_ca_pem: None,
            serving_pem: String::new(),
            serving_key_pem: String::new(),
            dns_names: dns_names.to_vec(),
            node_server_pem: String::new(),
            node_server_key_pem: String::new(),
            node_client_pem: String::new(),
            node_client_key_pem: String::new(),
        };
        certificates.renew_leaves(now, lifetimes)?;
        Ok(certificates)
    }

    /// The `caBundle`: the current CA, then the previous one if any.
    pub fn bundle_pem(&self) -> String {
        match &self.previous_ca_pem {
            Some(previous) => format!("{}{}", self.ca_pem, previous),
            None => self.ca_pem.clone(),
        }
    }

    /// What is due at `now` for a server that must answer to `dns_names`.
    pub fn renewal_due(
        &self,
        dns_names: &[String],
        now: OffsetDateTime,
        lifetimes: Lifetimes,
    ) -> Result<Renewal, CertError> {
        let (ca_from, ca_until) = validity(&self.ca_pem, "CA certificate")?;
        if due(ca_from, ca_until, now, lifetimes) {
            return Ok(Renewal::Authority);
        }
        if self.node_server_pem.is_empty() || self.node_client_pem.is_empty() {
            return Ok(Renewal::Serving);
        }
        let (from, until) = validity(&self.serving_pem, "serving certificate")?;
        if due(from, until, now, lifetimes) || self.dns_names != dns_names {
            return Ok(Renewal::Serving);
        }
        Ok(Renewal::None)
    }

    /// Carries out `renewal` (a no-op for [`Renewal::None`]).
    pub fn renew(
        &mut self,
        renewal: Renewal,
        dns_names: &[String],
        now: OffsetDateTime,
        lifetimes: Lifetimes,
    ) -> Result<(), CertError> {
        self.dns_names = dns_names.to_vec();
        match renewal {
            Renewal::None => Ok(()),
            Renewal::Serving => self.renew_leaves(now, lifetimes),
            Renewal::Authority => {
                let previous = self.ca_pem.clone();
                *self = Self::generate(dns_names, now, lifetimes)?;
                self.previous_ca_pem = Some(previous);
                Ok(())
            }
        }
    }

    /// Issues the serving certificate and the node link's two certificates.
    fn renew_leaves(&mut self, now: OffsetDateTime, lifetimes: Lifetimes) -> Result<(), CertError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(|source| CertError::Generate {
            what: "certificates (CA key)",
            source,
        })?;
        // The issuer is named by the CA's subject, which `authority_params` always gives.
        let issuer = Issuer::new(authority_params(now, lifetimes.authority), ca_key);
        let until = now + lifetimes.serving;
        let common_name = self.dns_names.first().cloned().unwrap_or_default();
        (self.serving_pem, self.serving_key_pem) = issue(
            &issuer,
            &common_name,
            &self.dns_names,
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            until,
        )?;
        (self.node_server_pem, self.node_server_key_pem) = issue(
            &issuer,
            NODE_LINK_SERVER_NAME,
            &[NODE_LINK_SERVER_NAME.to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            until,
        )?;
        (self.node_client_pem, self.node_client_key_pem) = issue(
            &issuer,
            NODE_LINK_CLIENT_NAME,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            until,
        )?;
        Ok(())
    }
}

/// A leaf certificate and its key, signed by `issuer`.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    dns_names: &[String],
    usage: ExtendedKeyUsagePurpose,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let generate = |source| CertError::Generate {
        what: "leaf certificate",
        source,
    };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(generate)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = until;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let certificate = params.signed_by(&key, issuer).map_err(generate)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

fn authority_params(now: OffsetDateTime, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + lifetime;
    params
}

/// Whether less than the renewal fraction of `from..until` is left at `now`.
fn due(
    from: OffsetDateTime,
    until: OffsetDateTime,
    now: OffsetDateTime,
    lifetimes: Lifetimes,
) -> bool {
    let total = (until - from).whole_seconds().max(1);
    let left = (until - now).whole_seconds();
    left * 100 < total * i64::from(lifetimes.renew_at_percent_left)
}

/// The validity period of the first certificate in `pem`.
pub fn validity(
    pem: &str,
    what: &'static str,
) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let parse = |reason: String| CertError::Parse { what, reason };
    let (from, until) = ironvisor_tls::validity(pem, what).map_err(|e| parse(e.to_string()))?;
    let time =
        |unix: i64| OffsetDateTime::from_unix_timestamp(unix).map_err(|e| parse(e.to_string()));
    Ok((time(from)?, time(until)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec![
            "ironvisor-apiserver.ironvisor-system.svc".to_string(),
            "ironvisor-apiserver.ironvisor-system.svc.cluster.local".to_string(),
        ]
    }

    fn short() -> Lifetimes {
        Lifetimes {
            authority: Duration::from_secs(1000),
            serving: Duration::from_secs(100),
            renew_at_percent_left: 20,
        }
    }

    /// A full TLS handshake in memory: `server` must present a certificate the client
    /// accepts for `server_name`, and the client's certificate (if any) must satisfy the
    /// server. Returns the client certificate's common name as the server saw it.
    fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
        server_name: &str,
    ) -> Result<Option<String>, rustls::Error> {
        use std::sync::Arc;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buffer = Vec::new();
            client.write_tls(&mut buffer).unwrap();
            server.read_tls(&mut buffer.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buffer = Vec::new();
            server.write_tls(&mut buffer).unwrap();
            client.read_tls(&mut buffer.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        Ok(server
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| ironvisor_tls::common_name(leaf)))
    }

    #[test]
    fn the_node_link_handshakes_both_ways_with_these_certificates() {
        use ironvisor_tls::{client_config, server_config, ClientAuth, ReloadableCertificate};
        use std::sync::Arc;
        let now = OffsetDateTime::now_utc();
        let certs = Certificates::generate(&names(), now, Lifetimes::default()).unwrap();
        let node_server = Arc::new(
            ReloadableCertificate::new(&certs.node_server_pem, &certs.node_server_key_pem).unwrap(),
        );
        let server = server_config(node_server, Some(&certs.ca_pem), ClientAuth::Required).unwrap();
        let client = client_config(
            &certs.ca_pem,
            &certs.node_client_pem,
            &certs.node_client_key_pem,
        )
        .unwrap();
        let seen = handshake(server.clone(), client.clone(), NODE_LINK_SERVER_NAME).unwrap();
        assert_eq!(seen.as_deref(), Some(NODE_LINK_CLIENT_NAME));

        // Another CA's certificates are refused on both sides.
        let other = Certificates::generate(&names(), now, Lifetimes::default()).unwrap();
        let stranger = client_config(
            &certs.ca_pem,
            &other.node_client_pem,
            &other.node_client_key_pem,
        )
        .unwrap();
        assert!(handshake(server, stranger, NODE_LINK_SERVER_NAME).is_err());
        let impostor = Arc::new(
            ReloadableCertificate::new(&other.node_server_pem, &other.node_server_key_pem).unwrap(),
        );
        let impostor = server_config(impostor, Some(&certs.ca_pem), ClientAuth::Required).unwrap();
        assert!(handshake(impostor, client, NODE_LINK_SERVER_NAME).is_err());
    }

    #[test]
    fn the_serving_certificate_names_the_service() {
        use ironvisor_tls::{server_config, ClientAuth, ReloadableCertificate};
        use std::sync::Arc;
        let now = OffsetDateTime::now_utc();
        let certs = Certificates::generate(&names(), now, Lifetimes::default()).unwrap();
        let der = ironvisor_tls::certificates(&certs.serving_pem, "serving")
            .unwrap()
            .remove(0);
        assert_eq!(
            ironvisor_tls::common_name(&der).as_deref(),
            Some("ironvisor-apiserver.ironvisor-system.svc")
        );
        let serving = Arc::new(
            ReloadableCertificate::new(&certs.serving_pem, &certs.serving_key_pem).unwrap(),
        );
        let server = server_config(serving, None, ClientAuth::None).unwrap();
        // kube-apiserver's view: trusts the bundle, dials the service name, no client cert.
        let mut roots = rustls::RootCertStore::empty();
        for ca in ironvisor_tls::certificates(&certs.bundle_pem(), "bundle").unwrap() {
            roots.add(ca).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        assert_eq!(
            handshake(
                server.clone(),
                client.clone(),
                "ironvisor-apiserver.ironvisor-system.svc"
            ),
            Ok(None)
        );
        assert!(handshake(server, client, "elsewhere.example").is_err());
        assert_eq!(certs.bundle_pem(), certs.ca_pem);
    }

    #[test]
    fn renewal_is_due_by_the_fraction_of_lifetime_left() {
        let start = OffsetDateTime::now_utc();
        let mut certs = Certificates::generate(&names(), start, short()).unwrap();
        let at = |secs: i64| start + time::Duration::seconds(secs);
        assert_eq!(
            certs.renewal_due(&names(), at(10), short()).unwrap(),
            Renewal::None
        );
        // The serving certificate lives 100 s (+5 min back-dated): due with 20 % left.
        assert_eq!(
            certs.renewal_due(&names(), at(90), short()).unwrap(),
            Renewal::Serving
        );
        let old_serving = certs.serving_pem.clone();
        certs
            .renew(Renewal::Serving, &names(), at(90), short())
            .unwrap();
        assert_ne!(certs.serving_pem, old_serving);
        assert_eq!(certs.previous_ca_pem, None);
        assert_eq!(
            certs.renewal_due(&names(), at(91), short()).unwrap(),
            Renewal::None
        );

        // Another service name needs another serving certificate.
        let other = vec!["other.ironvisor-system.svc".to_string()];
        assert_eq!(
            certs.renewal_due(&other, at(91), short()).unwrap(),
            Renewal::Serving
        );

        // Close to the CA's end, the CA is renewed and the old one stays in the bundle.
        let old_ca = certs.ca_pem.clone();
        assert_eq!(
            certs.renewal_due(&names(), at(990), short()).unwrap(),
            Renewal::Authority
        );
        certs
            .renew(Renewal::Authority, &names(), at(990), short())
            .unwrap();
        assert_ne!(certs.ca_pem, old_ca);
        assert_eq!(certs.bundle_pem(), format!("{}{}", certs.ca_pem, old_ca));
    }

    #[test]
    fn garbage_is_reported_as_not_a_certificate() {
        let err = validity("nonsense", "CA certificate").unwrap_err();
        assert!(err.to_string().contains("stored CA certificate"), "{err}");
    }
}
