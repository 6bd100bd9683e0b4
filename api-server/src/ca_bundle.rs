//! Injects the api-server's CA bundle into the objects through which kube-apiserver calls
//! it: the webhook configurations and the APIService. Each is patched only when its bundle
//! differs, so replicas running the same loop do not fight.

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::{info, instrument};

/// Why a bundle could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The API call failed.
    #[error("{action} {kind} {name}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The object's kind.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// The patch could not be built.
    #[error("encoding the patch of {kind} {name}: {source}")]
    Encode {
        /// The object's kind.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The error.
        source: serde_json::Error,
    },
}

/// The objects to keep in step.
#[derive(Debug, Clone, Default)]
pub struct BundleTargets {
    /// ValidatingWebhookConfiguration names.
    pub validating: Vec<String>,
    /// MutatingWebhookConfiguration names.
    pub mutating: Vec<String>,
    /// APIService names.
    pub api_services: Vec<String>,
}

fn kube_error(
    action: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> BundleError {
    let name = name.to_string();
    move |source| BundleError::Kube {
        action,
        kind,
        name,
        source,
    }
}

/// JSON patch operations setting `webhooks[i].clientConfig.caBundle` where it differs.
fn webhook_operations(current: &[Option<ByteString>], bundle: &[u8]) -> Vec<serde_json::Value> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    current
        .iter()
        .enumerate()
        .filter(|(_, existing)| existing.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|(index, _)| {
            json!({"op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"), "value": encoded})
        })
        .collect()
}

/// Makes every target carry `bundle_pem`. Returns how many objects were patched.
#[instrument(skip_all)]
pub async fn inject(
    client: &kube::Client,
    targets: &BundleTargets,
    bundle_pem: &str,
) -> Result<usize, BundleError> {
    let bundle = bundle_pem.as_bytes();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mut patched = inject_webhooks(
        &validating,
        "ValidatingWebhookConfiguration",
        &targets.validating,
        bundle,
        |object| {
            let hooks = object.webhooks.as_deref().unwrap_or_default();
            hooks
                .iter()
                .map(|h| h.client_config.ca_bundle.clone())
                .collect()
        },
    )
    .await?;
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    patched += inject_webhooks(
        &mutating,
        "MutatingWebhookConfiguration",
        &targets.mutating,
        bundle,
        |object| {
            let hooks = object.webhooks.as_deref().unwrap_or_default();
            hooks
                .iter()
                .map(|h| h.client_config.ca_bundle.clone())
                .collect()
        },
    )
    .await?;
    let services: Api<APIService> = Api::all(client.clone());
    for name in &targets.api_services {
        const KIND: &str = "APIService";
        let object = services
            .get(name)
            .await
            .map_err(kube_error("reading", KIND, name))?;
        let current = object.spec.and_then(|spec| spec.ca_bundle);
        if current.as_ref().map(|b| b.0.as_slice()) != Some(bundle) {
            let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
            let patch = json!({"spec": {"caBundle": encoded}});
            services
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube_error("patching", KIND, name))?;
            info!(kind = KIND, %name, "CA bundle injected");
            patched += 1;
        }
    }
    Ok(patched)
}

/// The webhook configurations `names` of one kind; `bundles` lists each webhook's bundle.
async fn inject_webhooks<K>(
    api: &Api<K>,
    kind: &'static str,
    names: &[String],
    bundle: &[u8],
    bundles: impl Fn(&K) -> Vec<Option<ByteString>>,
) -> Result<usize, BundleError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut patched = 0;
    for name in names {
        let object = api
            .get(name)
            .await
            .map_err(kube_error("reading", kind, name))?;
        let current = bundles(&object);
        let operations = webhook_operations(&current, bundle);
        if operations.is_empty() {
            continue;
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
            .map_err(|source| BundleError::Encode {
                kind,
                name: name.clone(),
                source,
            })?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(kube_error("patching", kind, name))?;
        info!(kind, %name, "CA bundle injected");
        patched += 1;
    }
    Ok(patched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_webhooks_whose_bundle_differs_are_patched() {
        let same = ByteString(b"PEM".to_vec());
        let other = ByteString(b"OLD".to_vec());
        let operations = webhook_operations(&[Some(same), None, Some(other)], b"PEM");
        let paths: Vec<_> = operations
            .iter()
            .map(|o| o["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/webhooks/1/clientConfig/caBundle",
                "/webhooks/2/clientConfig/caBundle"
            ]
        );
        assert_eq!(operations[0]["value"], "UEVN");
    }
}
