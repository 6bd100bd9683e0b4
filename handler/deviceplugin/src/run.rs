//! Running every configured plugin together until shutdown: one health watcher and one
//! plugin task per resource.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, info_span, Instrument};

use crate::config::{ConfigError, DevicePluginConfig};
use crate::health;
use crate::plugin::{run_plugin, PluginError, PluginSettings};

/// Why [`run_device_plugins`] returned an error.
#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    /// The configuration cannot work.
    #[error("invalid device-plugin configuration: {0}")]
    Config(#[from] ConfigError),
    /// One plugin stopped for good; the others were stopped too.
    #[error("device plugin {resource}: {source}")]
    Plugin {
        /// The resource name.
        resource: String,
        /// Why it stopped.
        #[source]
        source: PluginError,
    },
    /// A plugin task panicked.
    #[error("device plugin {resource} ended abnormally: {reason}")]
    Task {
        /// The resource name.
        resource: String,
        /// What the runtime reported.
        reason: String,
    },
}

/// Serves and registers a plugin per resource of `config` until `shutdown` completes,
/// re-registering whenever the kubelet restarts. On return, every plugin socket this
/// call created is removed. An error of one plugin stops them all.
pub async fn run_device_plugins(
    config: DevicePluginConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevicePluginError> {
    config.validate()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut plugins = JoinSet::new();
    let mut names = HashMap::new();
    for resource in &config.resources {
        let resource = Arc::new(resource.clone());
        let span = info_span!("device_plugin", resource = %resource.resource_name);
        let (health_tx, health_rx) = watch::channel(
            health::initial(&resource.host_path)
                .instrument(span.clone())
                .await,
        );
        let settings = PluginSettings::new(&config, &resource);
        let interval = config.health_interval;
        let host_path = resource.host_path.clone();
        let name = resource.resource_name.clone();
        let stop = stop_rx.clone();
        let handle = plugins.spawn(
            async move {
                // The watcher ends when the plugin drops the last receiver.
                tokio::spawn(
                    health::watch_device(host_path, interval, health_tx).in_current_span(),
                );
                (name, run_plugin(resource, settings, health_rx, stop).await)
            }
            .instrument(span),
        );
        names.insert(handle.id(), resource_name_of(&config, names.len()));
    }
    info!(
        plugins = config.resources.len(),
        dir = %config.plugin_dir.display(),
        "device plugins started"
    );

    tokio::pin!(shutdown);
    let mut first_error = None;
    let mut shutting_down = false;
    while !plugins.is_empty() {
        let joined = tokio::select! {
            () = &mut shutdown, if !shutting_down => {
                info!("shutting down the device plugins");
                shutting_down = true;
                let _ = stop_tx.send(true);
                continue;
            }
            joined = plugins.join_next_with_id() => joined,
        };
        let error = match joined {
            None => break,
            Some(Ok((_, (_, Ok(()))))) => None,
            Some(Ok((_, (resource, Err(source))))) => {
                Some(DevicePluginError::Plugin { resource, source })
            }
            Some(Err(e)) => Some(DevicePluginError::Task {
                resource: names.get(&e.id()).cloned().unwrap_or_default(),
                reason: e.to_string(),
            }),
        };
        if let Some(error) = error {
            let _ = stop_tx.send(true);
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn resource_name_of(config: &DevicePluginConfig, index: usize) -> String {
    config
        .resources
        .get(index)
        .map(|r| r.resource_name.clone())
        .unwrap_or_default()
}
