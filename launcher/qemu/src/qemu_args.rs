//! The QEMU command-line arguments of the VM's NICs.
//!
//! libvirt 9.0 cannot describe QEMU's `-netdev dgram` backend, so each NIC is passed
//! through with libvirt's QEMU namespace (`<qemu:commandline>`): a `dgram` netdev on a
//! pair of unix datagram sockets (QEMU binds `local`, sends to `remote`, where the
//! launcher's [`relay`](crate::relay) listens) and a `virtio-net-pci` device carrying the
//! guest MAC.
//!
//! Both are written in QEMU's JSON syntax, like libvirt's own arguments. Besides needing
//! no `,,` escaping, this matters for PCI placement: QEMU creates `key=value` devices
//! *before* all JSON ones, so a `key=value` NIC would take slot 2 from libvirt's
//! explicitly addressed devices and QEMU would refuse to start. As JSON, the NIC is
//! created after libvirt's devices and lands in the first free slot; NICs keep their
//! configured order on the `pc` machine's bus.

use std::path::Path;

use serde_json::json;

/// XML namespace of libvirt's QEMU command-line passthrough.
pub const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// Prefix bound to [`QEMU_NAMESPACE`] in the domain XML.
pub const QEMU_PREFIX: &str = "qemu";
/// Guest device model of every NIC.
pub const NIC_MODEL: &str = "virtio-net-pci";

/// QEMU ids of the `index`-th NIC's netdev and device. Built from the index, not the
/// configured NIC id, so they are always valid QEMU identifiers.
pub fn nic_ids(index: usize) -> (String, String) {
    (format!("ivnet{index}"), format!("ivnic{index}"))
}

/// `-netdev` and `-device` for one NIC, as separate argv words (not yet XML-escaped).
pub fn nic_args(index: usize, mac: &str, qemu_socket: &Path, relay_socket: &Path) -> [String; 4] {
    let (netdev, device) = nic_ids(index);
    let netdev_json = json!({
        "type": "dgram",
        "id": netdev,
        "local": { "type": "unix", "path": qemu_socket.to_string_lossy() },
        "remote": { "type": "unix", "path": relay_socket.to_string_lossy() },
    });
    let device_json = json!({
        "driver": NIC_MODEL,
        "netdev": netdev,
        "id": device,
        "mac": mac,
        // No PXE option ROM: the kernel is booted directly.
        "romfile": "",
    });
    [
        "-netdev".to_string(),
        netdev_json.to_string(),
        "-device".to_string(),
        device_json.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_args_use_dgram_unix_sockets_and_virtio_net_pci() {
        let args = nic_args(
            1,
            "52:54:00:aa:bb:cc",
            Path::new("/run/iv/7/nic1-qemu.sock"),
            Path::new("/run/iv/7/nic1.sock"),
        );
        assert_eq!(args[0], "-netdev");
        let netdev: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(
            netdev,
            json!({
                "type": "dgram", "id": "ivnet1",
                "local": {"type": "unix", "path": "/run/iv/7/nic1-qemu.sock"},
                "remote": {"type": "unix", "path": "/run/iv/7/nic1.sock"},
            })
        );
        assert_eq!(args[2], "-device");
        let device: serde_json::Value = serde_json::from_str(&args[3]).unwrap();
        assert_eq!(
            device,
            json!({
                "driver": "virtio-net-pci", "netdev": "ivnet1", "id": "ivnic1",
                "mac": "52:54:00:aa:bb:cc", "romfile": "",
            })
        );
    }

    #[test]
    fn odd_paths_survive_as_json_strings() {
        let path = r#"/x,y/"q'\z"#;
        let args = nic_args(0, "52:54:00:00:00:01", Path::new(path), Path::new("/l"));
        let netdev: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(netdev["local"]["path"], path);
    }
}
