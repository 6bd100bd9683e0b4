//! Runs the `/dev/kvm` and `/dev/net/tun` plugins against the kubelet on this host
//! until Ctrl-C or SIGTERM, for trying them by hand (as root):
//!
//! ```text
//! cargo run -p ironvisor-deviceplugin --example serve -- [PLUGIN_DIR] [DEVICE_COUNT]
//! ```
//!
//! Defaults: `/var/lib/kubelet/device-plugins`, 110 devices per resource.

use std::path::PathBuf;

use ironvisor_deviceplugin::{run_device_plugins, DevicePluginConfig};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut config = DevicePluginConfig::default();
    let mut args = std::env::args().skip(1);
    if let Some(dir) = args.next() {
        config.plugin_dir = PathBuf::from(dir);
    }
    if let Some(count) = args.next() {
        let count: usize = count
            .parse()
            .map_err(|e| format!("device count {count:?}: {e}"))?;
        for resource in &mut config.resources {
            resource.device_count = count;
        }
    }
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    run_device_plugins(config, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    })
    .await
    .map_err(|e| e.to_string())
}
