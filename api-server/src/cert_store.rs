//! Keeps the api-server's certificates in a Secret of its namespace, shared by all
//! replicas: the first replica to start creates it, any replica renews it when due
//! (optimistic concurrency on the Secret's resourceVersion decides who wins), and every
//! replica reloads what the Secret holds.
//!
//! The api-server does this itself rather than a one-shot Job: a Job runs once, but the
//! serving certificate must be renewed for as long as the api-server runs, and the
//! process that serves with the key is the one that knows when it reloaded it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use time::OffsetDateTime;
use tracing::{info, instrument};

use ironvisor_crds::cluster::NODE_LINK_SECRET;

use crate::certs::{CertError, Certificates, Lifetimes, Renewal};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
const SERVING_CERT: &str = "tls.crt";
const SERVING_KEY: &str = "tls.key";
const NODE_SERVER_CERT: &str = "node-server.crt";
const NODE_SERVER_KEY: &str = "node-server.key";
const NODE_CLIENT_CERT: &str = "node-client.crt";
const NODE_CLIENT_KEY: &str = "node-client.key";
const DNS_NAMES_ANNOTATION: &str = "ironvisor.io/dns-names";

/// Why the certificates could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API call failed.
    #[error("{action} Secret {namespace}/{name}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The error.
        source: Box<kube::Error>,
    },
    /// Making or reading a certificate failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The Secret lacks a key or holds text that is not UTF-8.
    #[error("Secret {namespace}/{name}: {problem}")]
    Malformed {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Others kept winning the race to renew.
    #[error("Secret {namespace}/{name}: gave up after {attempts} conflicting updates")]
    Contended {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// How many attempts.
        attempts: u32,
    },
}

/// Where the certificates live and what they must cover.
#[derive(Debug, Clone)]
pub struct CertStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
    dns_names: Vec<String>,
    lifetimes: Lifetimes,
}

impl CertStore {
    /// The Secret `namespace/name`, for a server answering to `dns_names`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        dns_names: Vec<String>,
        lifetimes: Lifetimes,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            dns_names,
            lifetimes,
        }
    }

    fn kube_error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> StoreError + '_ {
        move |source| StoreError::Kube {
            action,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// The current certificates: created if the Secret is missing, renewed if due.
    #[instrument(skip(self), fields(secret = %format!("{}/{}", self.namespace, self.name)))]
    pub async fn ensure(&self) -> Result<Certificates, StoreError> {
        const ATTEMPTS: u32 = 5;
        for _ in 0..ATTEMPTS {
            let now = OffsetDateTime::now_utc();
            let existing = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(self.kube_error("reading"))?;
            let Some(secret) = existing else {
                let certificates = Certificates::generate(&self.dns_names, now, self.lifetimes)?;
                let secret = self.secret_holding(&certificates, None);
                match self.api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        info!("created the CA and the serving certificate");
                        return Ok(certificates);
                    }
                    // Another replica created it first: read theirs.
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(source) => return Err(self.kube_error("creating")(source)),
                }
            };
            let mut certificates = self.certificates_in(&secret)?;
            let renewal = certificates.renewal_due(&self.dns_names, now, self.lifetimes)?;
            if renewal == Renewal::None {
                return Ok(certificates);
            }
            certificates.renew(renewal, &self.dns_names, now, self.lifetimes)?;
            let version = secret.metadata.resource_version.clone();
            let replacement = self.secret_holding(&certificates, version);
            match self
                .api
                .replace(&self.name, &PostParams::default(), &replacement)
                .await
            {
                Ok(_) => {
                    info!(?renewal, "renewed");
                    return Ok(certificates);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(source) => return Err(self.kube_error("renewing")(source)),
            }
        }
        Err(StoreError::Contended {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            attempts: ATTEMPTS,
        })
    }

    /// Writes the node agents' Secret ([`NODE_LINK_SECRET`]): their link certificate and
    /// key and the CA bundle, never the CA's key. Only when it differs.
    #[instrument(skip_all)]
    pub async fn publish_node_link(&self, certificates: &Certificates) -> Result<(), StoreError> {
        let data = BTreeMap::from([
            (
                CA_CERT.to_string(),
                ByteString(certificates.bundle_pem().into_bytes()),
            ),
            (
                SERVING_CERT.to_string(),
                ByteString(certificates.node_server_pem.clone().into_bytes()),
            ),
            (
                SERVING_KEY.to_string(),
                ByteString(certificates.node_server_key_pem.clone().into_bytes()),
            ),
        ]);
        let error = |action: &'static str| {
            move |source| StoreError::Kube {
                action,
                namespace: self.namespace.clone(),
                name: NODE_LINK_SECRET.to_string(),
                source: Box::new(source),
            }
        };
        let existing = self
            .api
            .get_opt(NODE_LINK_SECRET)
            .await
            .map_err(error("reading"))?;
        if existing.as_ref().and_then(|s| s.data.as_ref()) == Some(&data) {
            return Ok(());
        }
        let resource_version = existing.and_then(|s| s.metadata.resource_version);
        let secret = tls_secret(
            NODE_LINK_SECRET,
            &self.namespace,
            resource_version.clone(),
            None,
            data,
        );
        let written = match resource_version {
            Some(_) => {
                self.api
                    .replace(NODE_LINK_SECRET, &PostParams::default(), &secret)
                    .await
            }
            None => self.api.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                info!("node link certificate published");
                Ok(())
            }
            // Another replica wrote it at the same time; the next round compares again.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(source) => Err(error("writing")(source)),
        }
    }

    fn secret_holding(
        &self,
        certificates: &Certificates,
        resource_version: Option<String>,
    ) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        };
        put(CA_CERT, &certificates.ca_pem);
        put(CA_KEY, &certificates.ca_key_pem);
        put(SERVING_CERT, &certificates.serving_pem);
        put(SERVING_KEY, &certificates.serving_key_pem);
        put(NODE_SERVER_CERT, &certificates.node_server_pem);
        put(NODE_SERVER_KEY, &certificates.node_server_key_pem);
        put(NODE_CLIENT_CERT, &certificates.node_client_pem);
        put(NODE_CLIENT_KEY, &certificates.node_client_key_pem);
        if let Some(previous) = &certificates.previous_ca_pem {
            put(PREVIOUS_CA_CERT, previous);
        }
        let annotations = BTreeMap::from([(
            DNS_NAMES_ANNOTATION.to_string(),
            certificates.dns_names.join(","),
        )]);
        tls_secret(
            &self.name,
            &self.namespace,
            resource_version,
            Some(annotations),
            data,
        )
    }

    fn certificates_in(&self, secret: &Secret) -> Result<Certificates, StoreError> {
        let data = secret.data.clone().unwrap_or_default();
        let malformed = |problem: String| StoreError::Malformed {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            problem,
        };
        let text = |key: &str| -> Result<Option<String>, StoreError> {
            data.get(key)
                .map(|bytes| {
                    String::from_utf8(bytes.0.clone())
                        .map_err(|_| malformed(format!("{key} is not UTF-8 text")))
                })
                .transpose()
        };
        let required = |key: &str| text(key)?.ok_or_else(|| malformed(format!("{key} is missing")));
        let dns_names = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DNS_NAMES_ANNOTATION))
            .map(|names| names.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        Ok(Certificates {
            ca_pem: required(CA_CERT)?,
            ca_key_pem: required(CA_KEY)?,
            previous_ca_pem: text(PREVIOUS_CA_CERT)?,
            serving_pem: required(SERVING_CERT)?,
            serving_key_pem: required(SERVING_KEY)?,
            dns_names,
            // Missing in a Secret from before the node link: renewal issues them.
            node_server_pem: text(NODE_SERVER_CERT)?.unwrap_or_default(),
            node_server_key_pem: text(NODE_SERVER_KEY)?.unwrap_or_default(),
            node_client_pem: text(NODE_CLIENT_CERT)?.unwrap_or_default(),
            node_client_key_pem: text(NODE_CLIENT_KEY)?.unwrap_or_default(),
        })
    }
}

/// A `kubernetes.io/tls` Secret of Ironvisor's holding `data`.
fn tls_secret(
    name: &str,
    namespace: &str,
    resource_version: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            resource_version,
            annotations,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "ironvisor".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}
