//! Which network a VM instance asks for, in both modes: its one interface on the pod
//! network, with KubeVirt's masquerade (the default) or bridge binding.

use ironvisor_crds::v1alpha1::VirtualMachineInstanceSpec;

use crate::config::{parse_mac, Binding, VmNetworkRequest};
use crate::ports::{ForwardedPort, PortProtocol};

/// Why an instance's interfaces cannot be wired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// More than one interface, or one not on the pod network.
    #[error("VM {vm_key}: {detail}")]
    Unsupported {
        /// The VM.
        vm_key: String,
        /// What is not supported.
        detail: String,
    },
    /// `macAddress` is not a MAC address.
    #[error("VM {vm_key}: interface {interface}: {text:?} is not a MAC address")]
    InvalidMac {
        /// The VM.
        vm_key: String,
        /// The interface.
        interface: String,
        /// What was given.
        text: String,
    },
}

impl RequestError {
    /// The reason string of the VM's condition or event.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::Unsupported { .. } => "NetworkUnsupported",
            RequestError::InvalidMac { .. } => "InvalidMac",
        }
    }
}

/// The network request of an instance, or `None` when it has no interface. `default_mac`
/// gives the MAC of an interface without `macAddress`.
pub fn request_for(
    vm_key: &str,
    vm_uid: &str,
    spec: &VirtualMachineInstanceSpec,
    default_mac: impl FnOnce(&str) -> [u8; 6],
) -> Result<Option<VmNetworkRequest>, RequestError> {
    let interfaces = &spec.domain.devices.interfaces;
    let Some(interface) = interfaces.first() else {
        return Ok(None);
    };
    let unsupported = |detail: String| RequestError::Unsupported {
        vm_key: vm_key.to_string(),
        detail,
    };
    if interfaces.len() > 1 {
        return Err(unsupported(format!(
            "{} interfaces; Ironvisor attaches one pod network interface per VM",
            interfaces.len()
        )));
    }
    let network = spec.networks.iter().find(|n| n.name == interface.name);
    if network.is_none_or(|n| n.pod.is_none()) {
        return Err(unsupported(format!(
            "interface {:?} is not on a pod network; Multus networks are not supported",
            interface.name
        )));
    }
    let binding = if interface.bridge.is_some() {
        Binding::Bridge
    } else {
        Binding::Masquerade
    };
    let mac = match interface.mac_address.as_deref() {
        Some(text) => parse_mac(text).ok_or_else(|| RequestError::InvalidMac {
            vm_key: vm_key.to_string(),
            interface: interface.name.clone(),
            text: text.to_string(),
        })?,
        None => default_mac(&interface.name),
    };
    let ports = interface
        .ports
        .iter()
        .filter_map(|port| {
            Some(ForwardedPort {
                protocol: match port.protocol_or_default() {
                    "UDP" => PortProtocol::Udp,
                    _ => PortProtocol::Tcp,
                },
                // Validation refuses numbers outside 1..=65535.
                port: u16::try_from(port.port).ok().filter(|&n| n != 0)?,
            })
        })
        .collect();
    Ok(Some(VmNetworkRequest {
        vm_key: vm_key.to_string(),
        vm_uid: vm_uid.to_string(),
        interface: interface.name.clone(),
        binding,
        mac,
        ports,
        tap_owner: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> VirtualMachineInstanceSpec {
        serde_json::from_str(json).unwrap()
    }

    const MASQUERADE: &str = r#"{"domain": {"devices": {"interfaces": [
        {"name": "default", "masquerade": {}}]}},
        "networks": [{"name": "default", "pod": {}}]}"#;

    #[test]
    fn one_pod_interface_gives_a_request() {
        let req = request_for("ns/vm", "uid", &spec(MASQUERADE), |_| [2, 0, 0, 0, 0, 1])
            .unwrap()
            .unwrap();
        assert_eq!(req.binding, Binding::Masquerade);
        assert_eq!(req.interface, "default");
        assert_eq!(req.mac, [2, 0, 0, 0, 0, 1]);
        let bridged = MASQUERADE.replace(
            r#""masquerade": {}"#,
            r#""bridge": {}, "macAddress": "52:54:00:aa:bb:cc""#,
        );
        let req = request_for("ns/vm", "uid", &spec(&bridged), |_| [0; 6])
            .unwrap()
            .unwrap();
        assert_eq!(req.binding, Binding::Bridge);
        assert_eq!(req.mac, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
    }

    #[test]
    fn no_interface_no_request_and_bad_ones_are_named() {
        let none = spec(r#"{"domain": {"devices": {}}}"#);
        assert!(request_for("ns/vm", "u", &none, |_| [0; 6])
            .unwrap()
            .is_none());
        let multus = MASQUERADE.replace(r#""pod": {}"#, r#""multus": {"networkName": "x"}"#);
        let err = request_for("ns/vm", "u", &spec(&multus), |_| [0; 6]).unwrap_err();
        assert_eq!(err.reason(), "NetworkUnsupported");
        assert!(err.to_string().contains("not on a pod network"), "{err}");
        let bad = MASQUERADE.replace(r#""masquerade": {}"#, r#""macAddress": "nope""#);
        let err = request_for("ns/vm", "u", &spec(&bad), |_| [0; 6]).unwrap_err();
        assert_eq!(err.reason(), "InvalidMac");
    }

    #[test]
    fn masquerade_ports_are_forwarded_with_their_protocol() {
        let spec = spec(
            r#"{"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {},
                "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]}},
                "networks": [{"name": "default", "pod": {}}]}"#,
        );
        let req = request_for("ns/vm", "uid-1", &spec, |_| [0x52, 0x54, 0, 0, 0, 1])
            .unwrap()
            .unwrap();
        assert_eq!(
            req.ports,
            vec![
                ForwardedPort {
                    protocol: PortProtocol::Tcp,
                    port: 80
                },
                ForwardedPort {
                    protocol: PortProtocol::Udp,
                    port: 53
                },
            ]
        );
    }
}
