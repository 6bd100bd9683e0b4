//! Who is asking, the way aggregated API servers are told: kube-apiserver authenticates
//! the user, then proxies the request with its front-proxy client certificate and the
//! user's name, groups and extra attributes in request headers. Those headers are believed
//! only on a connection whose client certificate chains to the request-header CA (checked
//! during the TLS handshake) and whose common name is an allowed proxy name.
//!
//! The CA, the allowed names and the header names come from the ConfigMap
//! `kube-system/extension-apiserver-authentication` that kube-apiserver publishes.

use std::collections::BTreeMap;

use hyper::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use tracing::instrument;

/// The ConfigMap kube-apiserver publishes its front-proxy settings in.
pub const AUTHENTICATION_CONFIG_MAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// Why the request-header settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The ConfigMap could not be read.
    #[error("reading ConfigMap {}/{}: {source}", AUTHENTICATION_CONFIG_MAP.0, AUTHENTICATION_CONFIG_MAP.1)]
    Kube {
        /// The error.
        source: kube::Error,
    },
    /// A key holds something other than a JSON list of strings.
    #[error("ConfigMap {}/{}: {key} is not a JSON list of strings: {source}", AUTHENTICATION_CONFIG_MAP.0, AUTHENTICATION_CONFIG_MAP.1)]
    BadList {
        /// The key.
        key: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Why a request is not authenticated (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No client certificate, or the server has no request-header CA to check it.
    #[error("the request did not come through kube-apiserver's front proxy (no verified client certificate)")]
    NoProxyCertificate,
    /// The certificate's common name is not an allowed proxy name.
    #[error("client certificate {common_name:?} is not an allowed front-proxy name")]
    NameNotAllowed {
        /// The certificate's common name.
        common_name: String,
    },
    /// The proxy did not name a user.
    #[error("the front proxy named no user")]
    NoUser,
}

/// The front-proxy settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaderAuth {
    /// PEM of the CA front-proxy client certificates chain to.
    pub client_ca_pem: Option<String>,
    /// Common names a proxy certificate may have (empty: any).
    pub allowed_names: Vec<String>,
    /// Headers naming the user, first present wins.
    pub username_headers: Vec<String>,
    /// Headers listing groups.
    pub group_headers: Vec<String>,
    /// Prefixes of headers carrying extra attributes.
    pub extra_prefixes: Vec<String>,
}

/// An authenticated user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (keys lower-case).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl RequestHeaderAuth {
    /// Reads kube-apiserver's published settings.
    #[instrument(skip_all)]
    pub async fn load(client: &kube::Client) -> Result<Self, IdentityError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), AUTHENTICATION_CONFIG_MAP.0);
        let config_map = api
            .get(AUTHENTICATION_CONFIG_MAP.1)
            .await
            .map_err(|source| IdentityError::Kube { source })?;
        Self::from_data(&config_map.data.unwrap_or_default())
    }

    /// From the ConfigMap's data.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, IdentityError> {
        let list = |key: &'static str| -> Result<Vec<String>, IdentityError> {
            match data.get(key) {
                Some(text) if !text.trim().is_empty() => serde_json::from_str(text)
                    .map_err(|source| IdentityError::BadList { key, source }),
                _ => Ok(Vec::new()),
            }
        };
        Ok(Self {
            client_ca_pem: data.get("requestheader-client-ca-file").cloned(),
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_prefixes: list("requestheader-extra-headers-prefix")?,
        })
    }

    /// The user of a request that arrived on a connection whose verified client
    /// certificate has `peer_common_name` (None: no certificate).
    pub fn authenticate(
        &self,
        peer_common_name: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<User, AuthnError> {
        let Some(common_name) = peer_common_name.filter(|_| self.client_ca_pem.is_some()) else {
            return Err(AuthnError::NoProxyCertificate);
        };
        if !self.allowed_names.is_empty() && !self.allowed_names.iter().any(|n| n == common_name) {
            return Err(AuthnError::NameNotAllowed {
                common_name: common_name.to_string(),
            });
        }
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .map(str::to_string)
                .collect()
        };
        let name = self
            .username_headers
            .iter()
            .flat_map(|header| values(header))
            .find(|name| !name.is_empty())
            .ok_or(AuthnError::NoUser)?;
        let groups = self
            .group_headers
            .iter()
            .flat_map(|header| values(header))
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            let header = header.as_str();
            let Some(key) = self.extra_prefixes.iter().find_map(|prefix| {
                let prefix = prefix.to_ascii_lowercase();
                header.strip_prefix(prefix.as_str())
            }) else {
                continue;
            };
            if let Ok(value) = value.to_str() {
                extra
                    .entry(percent_decode(key).to_ascii_lowercase())
                    .or_default()
                    .push(value.to_string());
            }
        }
        Ok(User {
            name,
            groups,
            extra,
        })
    }
}

/// Decodes `%XX` escapes (extra keys are percent-encoded by the proxy).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(high), Some(low)) if hex(high).is_some() && hex(low).is_some() => {
                let value = hex(high).unwrap_or(0) * 16 + hex(low).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn auth() -> RequestHeaderAuth {
        let data = BTreeMap::from([
            (
                "requestheader-client-ca-file".to_string(),
                "PEM".to_string(),
            ),
            (
                "requestheader-allowed-names".to_string(),
                r#"["front-proxy-client"]"#.to_string(),
            ),
            (
                "requestheader-username-headers".to_string(),
                r#"["X-Remote-User"]"#.to_string(),
            ),
            (
                "requestheader-group-headers".to_string(),
                r#"["X-Remote-Group"]"#.to_string(),
            ),
            (
                "requestheader-extra-headers-prefix".to_string(),
                r#"["X-Remote-Extra-"]"#.to_string(),
            ),
        ]);
        RequestHeaderAuth::from_data(&data).unwrap()
    }

    fn headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", HeaderValue::from_static("alice"));
        headers.append("x-remote-group", HeaderValue::from_static("dev"));
        headers.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        headers.insert(
            "x-remote-extra-authentication.kubernetes.io%2fpod-name",
            HeaderValue::from_static("p-1"),
        );
        headers
    }

    #[test]
    fn the_proxy_names_the_user_groups_and_extras() {
        let user = auth()
            .authenticate(Some("front-proxy-client"), &headers())
            .unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "system:authenticated"]);
        assert_eq!(
            user.extra.get("authentication.kubernetes.io/pod-name"),
            Some(&vec!["p-1".to_string()])
        );
    }

    #[test]
    fn headers_are_not_believed_without_the_proxy_certificate() {
        assert_eq!(
            auth().authenticate(None, &headers()),
            Err(AuthnError::NoProxyCertificate)
        );
        assert_eq!(
            auth().authenticate(Some("mallory"), &headers()),
            Err(AuthnError::NameNotAllowed {
                common_name: "mallory".into()
            })
        );
        let no_ca = RequestHeaderAuth {
            client_ca_pem: None,
            ..auth()
        };
        assert_eq!(
            no_ca.authenticate(Some("front-proxy-client"), &headers()),
            Err(AuthnError::NoProxyCertificate)
        );
        assert_eq!(
            auth().authenticate(Some("front-proxy-client"), &HeaderMap::new()),
            Err(AuthnError::NoUser)
        );
    }

    #[test]
    fn bad_lists_are_named() {
        let data = BTreeMap::from([(
            "requestheader-allowed-names".to_string(),
            "front-proxy-client".to_string(),
        )]);
        let err = RequestHeaderAuth::from_data(&data).unwrap_err();
        assert!(
            err.to_string().contains("requestheader-allowed-names"),
            "{err}"
        );
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
