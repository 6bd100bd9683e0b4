//! An interface's NIC model and forwarded ports (KubeVirt's `model` and `ports`).

use std::collections::HashMap;

use super::{FieldPath, ValidationError};
use crate::v1alpha1::Interface;

/// The one NIC model the microVM has.
pub const SERVED_NIC_MODEL: &str = "virtio";
/// The protocols a port may name.
pub const PORT_PROTOCOLS: [&str; 2] = ["TCP", "UDP"];

/// Checks `interface` (at `path`): its model, and its ports (masquerade only, each a valid
/// port and protocol, none twice).
pub(super) fn check(interface: &Interface, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if let Some(model) = interface
        .model
        .as_deref()
        .filter(|model| *model != SERVED_NIC_MODEL)
    {
        errors.push(ValidationError::NicModelNotServed {
            path: path.child("model").into(),
            value: model.to_string(),
        });
    }
    if interface.ports.is_empty() {
        return;
    }
    if interface.bridge.is_some() {
        errors.push(ValidationError::PortsNeedMasquerade {
            path: path.child("ports").into(),
        });
    }
    let list = path.child("ports");
    let mut seen: HashMap<(&str, i32), FieldPath> = HashMap::new();
    for (index, port) in interface.ports.iter().enumerate() {
        let port_path = list.index(index);
        if !(1..=65535).contains(&port.port) {
            errors.push(ValidationError::InvalidPort {
                path: port_path.child("port").into(),
                value: port.port,
            });
        }
        let protocol = port.protocol_or_default();
        if !PORT_PROTOCOLS.contains(&protocol) {
            errors.push(ValidationError::InvalidPortProtocol {
                path: port_path.child("protocol").into(),
                value: protocol.to_string(),
            });
        }
        match seen.get(&(protocol, port.port)) {
            Some(first) => errors.push(ValidationError::DuplicatePort {
                path: port_path.child("port").into(),
                port: port.port,
                protocol: protocol.to_string(),
                first: first.to_string(),
            }),
            None => {
                seen.insert((protocol, port.port), port_path);
            }
        }
    }
}
