//! What the plugins serve and where: the kubelet's device-plugin directory, the
//! resources (name, host device, how many virtual devices) and the timings.

use std::path::PathBuf;
use std::time::Duration;

/// The kubelet's device-plugin directory with the default `--root-dir`.
pub const DEFAULT_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Virtual devices advertised per resource: how many pods on one node may hold the
/// resource at once (the kubelet's default pod limit, as KubeVirt does).
pub const DEFAULT_DEVICE_COUNT: usize = 110;
/// The kubelet's registration socket, inside the plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
pub use ironvisor_crds::cluster::{KVM_RESOURCE, TUN_RESOURCE};

/// Why a [`DevicePluginConfig`] is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No resource to serve.
    #[error("no device resources configured")]
    NoResources,
    /// A resource advertises no device, so it could never be allocated.
    #[error("resource {resource} advertises no devices (device_count is 0)")]
    NoDevices {
        /// The resource name.
        resource: String,
    },
    /// The short name must fit a socket file name and a device ID.
    #[error("resource {resource}: short name {name:?} must be 1 to 20 characters of [a-z0-9-]")]
    BadName {
        /// The resource name.
        resource: String,
        /// The short name.
        name: String,
    },
    /// Two resources share a short name (and so a socket) or a resource name.
    #[error("resource {resource} is configured twice")]
    Duplicate {
        /// The resource (or short) name seen twice.
        resource: String,
    },
    /// A polling interval or back-off of zero would spin.
    #[error("{what} must be longer than zero")]
    ZeroDuration {
        /// Which setting.
        what: &'static str,
    },
}

/// One extended resource backed by one host device node, shared by every pod that
/// holds one of its virtual devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceResource {
    /// Short name: the socket is `ironvisor-<name>.sock`, device IDs `<name>-<n>`.
    pub name: String,
    /// The extended resource name pods request, e.g. [`KVM_RESOURCE`].
    pub resource_name: String,
    /// The device node on the host; health is whether it opens read-write.
    pub host_path: PathBuf,
    /// Where the device node appears inside the container.
    pub container_path: PathBuf,
    /// How many identical virtual devices to advertise.
    pub device_count: usize,
}

impl DeviceResource {
    /// `/dev/kvm` as [`KVM_RESOURCE`], [`DEFAULT_DEVICE_COUNT`] devices.
    pub fn kvm() -> Self {
        Self::same_path("kvm", KVM_RESOURCE, "/dev/kvm")
    }

    /// `/dev/net/tun` as [`TUN_RESOURCE`], [`DEFAULT_DEVICE_COUNT`] devices.
    pub fn tun() -> Self {
        Self::same_path("tun", TUN_RESOURCE, "/dev/net/tun")
    }

    fn same_path(name: &str, resource_name: &str, path: &str) -> Self {
        Self {
            name: name.to_owned(),
            resource_name: resource_name.to_owned(),
            host_path: PathBuf::from(path),
            container_path: PathBuf::from(path),
            device_count: DEFAULT_DEVICE_COUNT,
        }
    }

    /// The socket's file name in the plugin directory, which is also the endpoint
    /// given to the kubelet.
    pub fn socket_name(&self) -> String {
        format!("ironvisor-{}.sock", self.name)
    }

    /// The ID of virtual device `index`.
    pub fn device_id(&self, index: usize) -> String {
        format!("{}-{index}", self.name)
    }
}

/// Everything [`crate::run_device_plugins`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePluginConfig {
    /// The kubelet's device-plugin directory: `kubelet.sock` is there and the plugin
    /// sockets are created there.
    pub plugin_dir: PathBuf,
    /// The resources, one plugin (socket, registration) each.
    pub resources: Vec<DeviceResource>,
    /// How often each host device is probed.
    pub health_interval: Duration,
    /// How often each plugin checks that its socket file is still the one it bound
    /// (the kubelet deletes every socket in the directory when it starts).
    pub socket_check_interval: Duration,
    /// First wait between registration attempts; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest wait between registration attempts.
    pub max_backoff: Duration,
    /// Deadline of one connection or Register call to the kubelet.
    pub kubelet_timeout: Duration,
}

impl Default for DevicePluginConfig {
    /// `/dev/kvm` and `/dev/net/tun`, 110 devices each, in [`DEFAULT_PLUGIN_DIR`].
    fn default() -> Self {
        Self {
            plugin_dir: PathBuf::from(DEFAULT_PLUGIN_DIR),
            resources: vec![DeviceResource::kvm(), DeviceResource::tun()],
            health_interval: Duration::from_secs(10),
            socket_check_interval: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            kubelet_timeout: Duration::from_secs(5),
        }
    }
}

impl DevicePluginConfig {
    /// The kubelet's registration socket.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.plugin_dir.join(KUBELET_SOCKET)
    }

    /// The socket of `resource`.
    pub fn socket_path(&self, resource: &DeviceResource) -> PathBuf {
        self.plugin_dir.join(resource.socket_name())
    }

    /// Checks what would make a plugin fail later or spin.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.resources.is_empty() {
            return Err(ConfigError::NoResources);
        }
        for (what, value) in [
            ("health_interval", self.health_interval),
            ("socket_check_interval", self.socket_check_interval),
            ("initial_backoff", self.initial_backoff),
            ("max_backoff", self.max_backoff),
            ("kubelet_timeout", self.kubelet_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { what });
            }
        }
        for (i, resource) in self.resources.iter().enumerate() {
            if !valid_short_name(&resource.name) {
                return Err(ConfigError::BadName {
                    resource: resource.resource_name.clone(),
                    name: resource.name.clone(),
                });
            }
            if resource.device_count == 0 {
                return Err(ConfigError::NoDevices {
                    resource: resource.resource_name.clone(),
                });
            }
            let clash = self.resources[..i].iter().find(|earlier| {
                earlier.name == resource.name || earlier.resource_name == resource.resource_name
            });
            if clash.is_some() {
                return Err(ConfigError::Duplicate {
                    resource: resource.resource_name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// 1 to 20 characters of `[a-z0-9-]`: safe in a file name, and `<name>-<n>` stays far
/// below the 63 characters a device ID may have.
fn valid_short_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn defaults_serve_kvm_and_tun_in_the_kubelet_directory() {
        let config = DevicePluginConfig::default();
        config.validate().unwrap();
        assert_eq!(
            config.kubelet_socket(),
            Path::new("/var/lib/kubelet/device-plugins/kubelet.sock")
        );
        let kvm = &config.resources[0];
        assert_eq!(kvm.resource_name, "devices.ironvisor.io/kvm");
        assert_eq!(kvm.host_path, Path::new("/dev/kvm"));
        assert_eq!(kvm.device_count, 110);
        assert_eq!(
            config.socket_path(kvm),
            Path::new("/var/lib/kubelet/device-plugins/ironvisor-kvm.sock")
        );
        let tun = &config.resources[1];
        assert_eq!(tun.resource_name, "devices.ironvisor.io/tun");
        assert_eq!(tun.container_path, Path::new("/dev/net/tun"));
        assert_eq!(tun.socket_name(), "ironvisor-tun.sock");
        assert_eq!(tun.device_id(7), "tun-7");
    }

    #[test]
    fn refuses_what_cannot_work() {
        let base = DevicePluginConfig::default();
        let with = |change: &dyn Fn(&mut DevicePluginConfig)| {
            let mut config = base.clone();
            change(&mut config);
            config.validate()
        };
        assert_eq!(
            with(&|c| c.resources.clear()),
            Err(ConfigError::NoResources)
        );
        assert!(matches!(
            with(&|c| c.resources[0].device_count = 0),
            Err(ConfigError::NoDevices { .. })
        ));
        assert!(matches!(
            with(&|c| c.resources[0].name = "KVM/x".into()),
            Err(ConfigError::BadName { .. })
        ));
        assert!(matches!(
            with(&|c| c.resources[1].name = "kvm".into()),
            Err(ConfigError::Duplicate { .. })
        ));
        assert_eq!(
            with(&|c| c.socket_check_interval = Duration::ZERO),
            Err(ConfigError::ZeroDuration {
                what: "socket_check_interval"
            })
        );
    }
}
