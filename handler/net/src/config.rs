//! The node-wide network configuration, the per-VM request, and their validation.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ports::ForwardedPort;
use crate::tool::is_executable;

/// Default name of the node bridge the CNI `bridge` plugin creates.
pub const DEFAULT_BRIDGE: &str = "ironvisor0";
/// Default pod subnet handed out by `host-local`.
pub const DEFAULT_SUBNET: &str = "10.222.0.0/24";
/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const DEFAULT_CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The CNI plugins this crate runs; all must be in [`NetworkConfig::cni_bin_dir`].
pub(crate) const REQUIRED_PLUGINS: [&str; 2] = ["bridge", "host-local"];

/// The subnet used between the pod namespace and the guest by the masquerade binding
/// (the same private range KubeVirt uses); the pod subnet must not overlap it.
pub(crate) const MASQUERADE_SUBNET: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(10, 0, 2, 0),
    prefix_len: 24,
};

/// Why a configuration or a request is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The node bridge name is not a valid interface name.
    #[error("network config: bridge name {name:?} {problem}")]
    BridgeName {
        /// The configured name.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The pod subnet cannot be used.
    #[error("network config: subnet {subnet:?} {problem}")]
    Subnet {
        /// The configured subnet.
        subnet: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A required CNI plugin is not installed.
    #[error(
        "network config: CNI plugin {path} is missing or not executable \
         (install Debian package containernetworking-plugins)"
    )]
    MissingPlugin {
        /// Where the plugin was expected.
        path: PathBuf,
    },
    /// The state directory is not an absolute path.
    #[error("network config: state_dir {path} must be an absolute path")]
    StateDir {
        /// The configured path.
        path: PathBuf,
    },
    /// A field of a [`VmNetworkRequest`] is not valid.
    #[error("network request for VM {vm_key:?}: {field} {problem}")]
    Request {
        /// The VM the request is for.
        vm_key: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// Node-wide settings of the VM network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Name of the node bridge (created by the CNI `bridge` plugin), e.g. `"ironvisor0"`.
    pub bridge: String,
    /// Pod subnet in CIDR form, e.g. `"10.222.0.0/24"`; its first address is the gateway.
    pub subnet: String,
    /// Directory holding the CNI plugin binaries, e.g. `/usr/lib/cni`.
    pub cni_bin_dir: PathBuf,
    /// Directory for IPAM leases (`ipam/`) and per-VM state (`iv-*/`), e.g. `<data>/net`.
    pub state_dir: PathBuf,
}

impl NetworkConfig {
    /// The default bridge, subnet and plugin directory with state under `state_dir`.
    pub fn with_state_dir(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            bridge: DEFAULT_BRIDGE.to_string(),
            subnet: DEFAULT_SUBNET.to_string(),
            cni_bin_dir: PathBuf::from(DEFAULT_CNI_BIN_DIR),
            state_dir: state_dir.into(),
        }
    }

    /// Checks names and addresses, and that the CNI plugins are installed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(problem) = ifname_problem(&self.bridge) {
            return Err(ConfigError::BridgeName {
                name: self.bridge.clone(),
                problem,
            });
        }
        let subnet = self.pod_subnet()?;
        if subnet.overlaps(&MASQUERADE_SUBNET) {
            return Err(ConfigError::Subnet {
                subnet: self.subnet.clone(),
                problem: format!(
                    "overlaps {MASQUERADE_SUBNET}, which the masquerade binding uses inside each VM namespace"
                ),
            });
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::StateDir {
                path: self.state_dir.clone(),
            });
        }
        for plugin in REQUIRED_PLUGINS {
            let path = self.cni_bin_dir.join(plugin);
            if !is_executable(path.as_os_str()) {
                return Err(ConfigError::MissingPlugin { path });
            }
        }
        Ok(())
    }

    /// The parsed pod subnet.
    pub(crate) fn pod_subnet(&self) -> Result<Ipv4Net, ConfigError> {
        let net: Ipv4Net = self.subnet.parse().map_err(|problem| ConfigError::Subnet {
            subnet: self.subnet.clone(),
            problem,
        })?;
        if net.prefix_len > 30 {
            return Err(ConfigError::Subnet {
                subnet: self.subnet.clone(),
                problem: "is too small: a /30 or larger is needed for a gateway and a VM"
                    .to_string(),
            });
        }
        if net.addr != net.network() {
            return Err(ConfigError::Subnet {
                subnet: self.subnet.clone(),
                problem: format!("has host bits set; did you mean {}?", net.network_cidr()),
            });
        }
        Ok(net)
    }
}

/// How the VM's NIC is connected to its pod network namespace (KubeVirt's bindings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Binding {
    /// The guest sits behind NAT on a private 10.0.2.0/24 link: everything arriving at the
    /// pod IP is forwarded to the guest, and guest traffic leaves with the pod IP.
    Masquerade,
    /// The pod interface is bridged to the guest, which gets the pod IP itself by DHCP.
    Bridge,
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Binding::Masquerade => "masquerade",
            Binding::Bridge => "bridge",
        })
    }
}

impl FromStr for Binding {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "masquerade" => Ok(Binding::Masquerade),
            "bridge" => Ok(Binding::Bridge),
            other => Err(format!(
                "unknown binding {other:?} (expected \"masquerade\" or \"bridge\")"
            )),
        }
    }
}

/// What one VM needs from the node network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetworkRequest {
    /// `namespace/name` of the VM; names the network namespace.
    pub vm_key: String,
    /// UID of this VM instance; the CNI container ID.
    pub vm_uid: String,
    /// KubeVirt interface name, e.g. `"default"`.
    pub interface: String,
    /// How the guest NIC is connected.
    pub binding: Binding,
    /// MAC address of the guest NIC; the DHCP server answers only this MAC.
    #[serde(with = "mac_serde")]
    pub mac: [u8; 6],
    /// Masquerade only: the ports forwarded to the guest (none: every port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ForwardedPort>,
    /// The user that opens the tap, when it is not root: the tap is made its, so that it
    /// needs no `CAP_NET_ADMIN` (a launcher pod running as the launcher user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_owner: Option<u32>,
}

impl VmNetworkRequest {
    /// Checks the identifiers and the MAC address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, problem: &str| ConfigError::Request {
            vm_key: self.vm_key.clone(),
            field,
            problem: problem.to_string(),
        };
        if self.vm_key.is_empty() || self.vm_key.chars().any(char::is_control) {
            return Err(fail("vm_key", "must be non-empty printable text"));
        }
        // The CNI spec restricts container IDs to this alphabet.
        let uid_ok = self
            .vm_uid
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && self
                .vm_uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !uid_ok {
            return Err(fail(
                "vm_uid",
                "must start with a letter or digit and contain only letters, digits, '_', '.', '-'",
            ));
        }
        if self.interface.is_empty() || self.interface.chars().any(char::is_control) {
            return Err(fail("interface", "must be non-empty printable text"));
        }
        if self.mac[0] & 1 != 0 {
            return Err(fail(
                "mac",
                "is a multicast address; a NIC needs a unicast MAC",
            ));
        }
        if self.mac == [0; 6] {
            return Err(fail("mac", "is all zeros"));
        }
        Ok(())
    }
}

/// Why an interface name is unusable, if it is.
pub(crate) fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':', whitespace or control characters")
    } else {
        None
    }
}

/// An IPv4 address with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ipv4Net {
    pub(crate) addr: Ipv4Addr,
    pub(crate) prefix_len: u8,
}

impl Ipv4Net {
    /// The subnet mask as an address, e.g. 255.255.255.0.
    pub(crate) fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    /// The network address (host bits cleared).
    pub(crate) fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & mask_bits(self.prefix_len))
    }

    /// `network/prefix`.
    pub(crate) fn network_cidr(&self) -> String {
        format!("{}/{}", self.network(), self.prefix_len)
    }

    /// Whether the two networks share any address.
    pub(crate) fn overlaps(&self, other: &Ipv4Net) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        let mask = mask_bits(shorter);
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| "is not in a.b.c.d/len form".to_string())?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("has an invalid IPv4 address {addr:?}"))?;
        let prefix_len: u8 = prefix
            .parse()
            .ok()
            .filter(|len| *len <= 32)
            .ok_or_else(|| format!("has an invalid prefix length {prefix:?}"))?;
        Ok(Self { addr, prefix_len })
    }
}

fn mask_bits(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        len if len >= 32 => u32::MAX,
        len => u32::MAX << (32 - u32::from(len)),
    }
}

/// `52:54:00:12:34:56` form of a MAC address.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Parses `52:54:00:12:34:56` (or with `-` separators).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Serializes a MAC as its text form so state files stay readable.
pub(crate) mod mac_serde {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_mac(mac))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 6], D::Error> {
        let text = String::deserialize(d)?;
        super::parse_mac(&text)
            .ok_or_else(|| de::Error::custom(format!("invalid MAC address {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> VmNetworkRequest {
        VmNetworkRequest {
            vm_key: "default/vm-small".into(),
            vm_uid: "3f0c2b1e-aaaa-4bbb-8ccc-123456789abc".into(),
            interface: "default".into(),
            binding: Binding::Masquerade,
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            ports: Vec::new(),
            tap_owner: None,
        }
    }

    #[test]
    fn subnet_parsing_and_arithmetic() {
        let net: Ipv4Net = "10.222.0.0/24".parse().unwrap();
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net.network(), Ipv4Addr::new(10, 222, 0, 0));
        let host: Ipv4Net = "10.222.0.7/20".parse().unwrap();
        assert_eq!(host.network(), Ipv4Addr::new(10, 222, 0, 0));
        assert_eq!(host.netmask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(host.network_cidr(), "10.222.0.0/20");
        assert!("10.0.0.0/8"
            .parse::<Ipv4Net>()
            .unwrap()
            .overlaps(&MASQUERADE_SUBNET));
        assert!(!net.overlaps(&MASQUERADE_SUBNET));
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.300/24".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn config_validation_names_the_problem() {
        let mut cfg = NetworkConfig::with_state_dir("/var/lib/ironvisor/net");
        cfg.cni_bin_dir = "/nonexistent/cni".into();
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::MissingPlugin { path } if path.ends_with("bridge")),
            "{err}"
        );

        let mut bad = cfg.clone();
        bad.bridge = "a-very-long-bridge-name".into();
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::BridgeName { .. })
        ));

        let mut bad = cfg.clone();
        bad.subnet = "10.0.0.0/8".into();
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("10.0.2.0/24"), "{err}");

        let mut bad = cfg.clone();
        bad.subnet = "10.222.0.5/24".into();
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("10.222.0.0/24"), "{err}");

        let mut bad = cfg.clone();
        bad.subnet = "10.222.0.0/31".into();
        assert!(matches!(bad.validate(), Err(ConfigError::Subnet { .. })));

        let mut bad = cfg;
        bad.state_dir = "relative/net".into();
        assert!(matches!(bad.validate(), Err(ConfigError::StateDir { .. })));
    }

    #[test]
    fn request_validation() {
        assert!(request().validate().is_ok());
        let mut bad = request();
        bad.vm_uid = "uid with spaces".into();
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("vm_uid"), "{err}");
        let mut bad = request();
        bad.mac = [0x01, 0, 0, 0, 0, 1];
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multicast"));
        let mut bad = request();
        bad.vm_key = String::new();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn mac_text_round_trip() {
        let mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
        assert_eq!(format_mac(&mac), "52:54:00:ab:cd:ef");
        assert_eq!(parse_mac("52:54:00:ab:cd:ef"), Some(mac));
        assert_eq!(parse_mac("52-54-00-AB-CD-EF"), Some(mac));
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:ef:00"), None);
        assert_eq!(parse_mac("5:54:00:ab:cd:ef"), None);
        let json = serde_json::to_string(&request()).unwrap();
        assert!(json.contains("\"52:54:00:12:34:56\""), "{json}");
        assert!(json.contains("\"masquerade\""), "{json}");
        let back: VmNetworkRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, request());
    }

    #[test]
    fn binding_text_form() {
        assert_eq!("bridge".parse::<Binding>(), Ok(Binding::Bridge));
        assert_eq!(Binding::Masquerade.to_string(), "masquerade");
        assert!("passt".parse::<Binding>().is_err());
    }
}
