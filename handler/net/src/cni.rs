//! Calls the CNI `bridge` plugin (with `host-local` IPAM) the way a container runtime does:
//! the network configuration as JSON on stdin, the parameters in `CNI_*` variables, and the
//! result (or a CNI error object) as JSON on stdout.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Ipv4Net, NetworkConfig};
use crate::tool::{Invocation, ToolError};

/// CNI spec version of the configurations we write (supported by Debian's plugins 1.1.1).
pub(crate) const CNI_VERSION: &str = "1.0.0";
/// Network name in the CNI configuration; `host-local` keeps its leases in `dataDir/<name>`.
pub(crate) const NETWORK_NAME: &str = "ironvisor";
/// Name of the pod interface the plugin creates inside the namespace.
pub(crate) const POD_IFNAME: &str = "eth0";

/// Why a CNI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin ran and returned a CNI error object.
    #[error("CNI {command} of container {container_id}: plugin {plugin} returned error {code}: {message}")]
    Plugin {
        /// `ADD` or `DEL`.
        command: &'static str,
        /// CNI container ID (the VM uid).
        container_id: String,
        /// Path of the plugin.
        plugin: PathBuf,
        /// CNI error code.
        code: u32,
        /// CNI error message and details.
        message: String,
    },
    /// The plugin could not be run, or failed without a CNI error object.
    #[error("CNI {command} of container {container_id}: {source}")]
    Tool {
        /// `ADD` or `DEL`.
        command: &'static str,
        /// CNI container ID (the VM uid).
        container_id: String,
        /// The failed command.
        #[source]
        source: ToolError,
    },
    /// The ADD result is not JSON of the expected shape.
    #[error("CNI ADD result from {plugin} is not a valid result: {source}; output was: {output}")]
    BadResult {
        /// Path of the plugin.
        plugin: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
        /// What the plugin printed.
        output: String,
    },
    /// The ADD result has no usable IPv4 configuration for the pod interface.
    #[error("CNI ADD result from {plugin} has {problem}; output was: {output}")]
    NoAddress {
        /// Path of the plugin.
        plugin: PathBuf,
        /// What is missing.
        problem: String,
        /// What the plugin printed.
        output: String,
    },
}

/// The address the CNI plugin gave the pod interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attachment {
    /// Pod IP on `eth0`.
    pub(crate) address: Ipv4Addr,
    /// Prefix length of the pod subnet.
    pub(crate) prefix_len: u8,
    /// The node bridge address, the pod's default gateway.
    pub(crate) gateway: Ipv4Addr,
}

/// The network configuration handed to the plugin for both ADD and DEL.
pub(crate) fn network_config(cfg: &NetworkConfig) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "bridge",
        "bridge": cfg.bridge,
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": "host-local",
            "subnet": cfg.subnet,
            "dataDir": ipam_dir(&cfg.state_dir),
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })
}

/// Where `host-local` keeps its leases.
pub(crate) fn ipam_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("ipam")
}

/// The `type` of a configuration: the plugin binary to run.
fn plugin_path(cni_bin_dir: &Path, config: &Value) -> PathBuf {
    let plugin = config
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge");
    cni_bin_dir.join(plugin)
}

fn invocation(
    command: &'static str,
    cni_bin_dir: &Path,
    config: &Value,
    container_id: &str,
    netns_path: &Path,
) -> Invocation {
    Invocation::new(plugin_path(cni_bin_dir, config))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns_path)
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", cni_bin_dir)
        .env_remove("CNI_ARGS")
        .stdin(config.to_string())
}

/// What CNI ADD made: the pod interface's address and the node side of its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Added {
    pub(crate) attachment: Attachment,
    /// The node-side interface (the bridge plugin's veth peer), when the result names one.
    pub(crate) host_interface: Option<String>,
}

/// Runs CNI ADD: creates the pod interface in `netns_path` and returns its address.
pub(crate) fn add(
    cni_bin_dir: &Path,
    config: &Value,
    container_id: &str,
    netns_path: &Path,
) -> Result<Added, CniError> {
    let plugin = plugin_path(cni_bin_dir, config);
    let output = invocation("ADD", cni_bin_dir, config, container_id, netns_path)
        .run()
        .map_err(|source| classify("ADD", container_id, &plugin, source))?;
    let attachment = parse_add_result(&plugin, &output.stdout)?;
    let bridge = config.get("bridge").and_then(Value::as_str);
    Ok(Added {
        attachment,
        host_interface: host_interface(&output.stdout, bridge),
    })
}

/// The interface of an ADD result that lives on the node (no sandbox) and is not the
/// bridge itself: the node end of the pod's veth.
fn host_interface(stdout: &str, bridge: Option<&str>) -> Option<String> {
    let result: AddResult = serde_json::from_str(stdout).ok()?;
    result
        .interfaces
        .into_iter()
        .find(|i| i.sandbox.is_none() && Some(i.name.as_str()) != bridge)
        .map(|i| i.name)
}

/// Runs CNI DEL: releases the IPAM lease, the masquerade rules and the pod interface.
/// Succeeds when there is nothing left to delete, also when the namespace is gone.
pub(crate) fn del(
    cni_bin_dir: &Path,
    config: &Value,
    container_id: &str,
    netns_path: &Path,
) -> Result<(), CniError> {
    let plugin = plugin_path(cni_bin_dir, config);
    invocation("DEL", cni_bin_dir, config, container_id, netns_path)
        .run()
        .map(drop)
        .map_err(|source| classify("DEL", container_id, &plugin, source))
}

/// A CNI error object, which plugins print on stdout when they fail.
#[derive(Debug, Deserialize)]
struct ErrorResult {
    code: u32,
    msg: String,
    #[serde(default)]
    details: String,
}

fn classify(
    command: &'static str,
    container_id: &str,
    plugin: &Path,
    source: ToolError,
) -> CniError {
    if let ToolError::Failed(failure) = &source {
        if let Ok(error) = serde_json::from_str::<ErrorResult>(&failure.stdout) {
            return CniError::Plugin {
                command,
                container_id: container_id.to_string(),
                plugin: plugin.to_path_buf(),
                code: error.code,
                message: if error.details.is_empty() {
                    error.msg
                } else {
                    format!("{}: {}", error.msg, error.details)
                },
            };
        }
    }
    CniError::Tool {
        command,
        container_id: container_id.to_string(),
        source,
    }
}

#[derive(Debug, Deserialize)]
struct AddResult {
    #[serde(default)]
    interfaces: Vec<ResultInterface>,
    #[serde(default)]
    ips: Vec<ResultIp>,
}

#[derive(Debug, Deserialize)]
struct ResultInterface {
    name: String,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ResultIp {
    #[serde(default)]
    interface: Option<usize>,
    address: String,
    #[serde(default)]
    gateway: Option<Ipv4Addr>,
}

/// Picks the IPv4 address of the pod interface (the one inside the sandbox named
/// [`POD_IFNAME`]) out of a CNI 1.0 result.
fn parse_add_result(plugin: &Path, stdout: &str) -> Result<Attachment, CniError> {
    let result: AddResult = serde_json::from_str(stdout).map_err(|source| CniError::BadResult {
        plugin: plugin.to_path_buf(),
        source,
        output: stdout.to_string(),
    })?;
    let missing = |problem: String| CniError::NoAddress {
        plugin: plugin.to_path_buf(),
        problem,
        output: stdout.to_string(),
    };
    let is_pod_interface = |index: Option<usize>| match index {
        Some(index) => result
            .interfaces
            .get(index)
            .is_some_and(|i| i.name == POD_IFNAME && i.sandbox.is_some()),
        // An IP without an interface index is taken as the pod's if it is the only one.
        None => result.ips.len() == 1,
    };
    let mut candidates = result
        .ips
        .iter()
        .filter(|ip| is_pod_interface(ip.interface));
    let (address, ip) = candidates
        .find_map(|ip| {
            ip.address
                .parse::<Ipv4Net>()
                .ok()
                .map(|address| (address, ip))
        })
        .ok_or_else(|| missing(format!("no IPv4 address for {POD_IFNAME}")))?;
    let gateway = ip
        .gateway
        .ok_or_else(|| missing(format!("no gateway for {address}")))?;
    Ok(Attachment {
        address: address.addr,
        prefix_len: address.prefix_len,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "ironvisor0", "mac": "e6:74:5f:ea:ca:d0"},
            {"name": "veth2866f431", "mac": "1e:48:e9:95:58:9e"},
            {"name": "eth0", "mac": "ca:fd:5a:7b:bd:a9", "sandbox": "/var/run/netns/iv-1"}
        ],
        "ips": [{"interface": 2, "address": "10.222.0.2/24", "gateway": "10.222.0.1"}],
        "dns": {}
    }"#;

    #[test]
    fn add_result_gives_pod_address_and_gateway() {
        let attachment = parse_add_result(Path::new("/usr/lib/cni/bridge"), RESULT).unwrap();
        assert_eq!(
            attachment,
            Attachment {
                address: Ipv4Addr::new(10, 222, 0, 2),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 222, 0, 1),
            }
        );
    }

    #[test]
    fn add_result_names_the_node_end_of_the_veth() {
        assert_eq!(
            host_interface(RESULT, Some("ironvisor0")).as_deref(),
            Some("veth2866f431")
        );
        let only_pod = r#"{"interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": []}"#;
        assert_eq!(host_interface(only_pod, Some("ironvisor0")), None);
        assert_eq!(host_interface("not json", None), None);
    }

    #[test]
    fn add_result_without_pod_ipv4_is_an_error() {
        let v6_only = RESULT.replace("10.222.0.2/24", "fd00::2/64");
        let err = parse_add_result(Path::new("bridge"), &v6_only).unwrap_err();
        assert!(
            err.to_string().contains("no IPv4 address for eth0"),
            "{err}"
        );

        let host_side = RESULT.replace("\"interface\": 2", "\"interface\": 1");
        assert!(parse_add_result(Path::new("bridge"), &host_side).is_err());

        let no_gateway = RESULT.replace(", \"gateway\": \"10.222.0.1\"", "");
        let err = parse_add_result(Path::new("bridge"), &no_gateway).unwrap_err();
        assert!(err.to_string().contains("no gateway"), "{err}");

        let err = parse_add_result(Path::new("bridge"), "not json").unwrap_err();
        assert!(matches!(err, CniError::BadResult { .. }));
    }

    #[test]
    fn plugin_error_object_becomes_the_message() {
        let source = ToolError::Failed(Box::new(crate::tool::Failure {
            command: "/usr/lib/cni/bridge".into(),
            status: "exit code 1".into(),
            stdout: r#"{"code": 11, "msg": "failed to allocate", "details": "range full"}"#.into(),
            stderr: String::new(),
        }));
        let err = classify("ADD", "uid-1", Path::new("/usr/lib/cni/bridge"), source);
        let text = err.to_string();
        assert!(
            text.contains("error 11: failed to allocate: range full") && text.contains("uid-1"),
            "{text}"
        );
    }

    #[test]
    fn network_config_has_bridge_masquerade_and_ipam() {
        let cfg = NetworkConfig::with_state_dir("/var/lib/ironvisor/net");
        let config = network_config(&cfg);
        assert_eq!(config["cniVersion"], CNI_VERSION);
        assert_eq!(config["type"], "bridge");
        assert_eq!(config["bridge"], "ironvisor0");
        assert_eq!(config["isGateway"], true);
        assert_eq!(config["ipMasq"], true);
        assert_eq!(config["ipam"]["type"], "host-local");
        assert_eq!(config["ipam"]["subnet"], "10.222.0.0/24");
        assert_eq!(config["ipam"]["dataDir"], "/var/lib/ironvisor/net/ipam");
        assert_eq!(config["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(
            plugin_path(Path::new("/usr/lib/cni"), &config),
            PathBuf::from("/usr/lib/cni/bridge")
        );
    }
}
