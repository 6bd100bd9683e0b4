//! The ports the masquerade binding forwards to the guest (KubeVirt's `interfaces[].ports`):
//! none listed forwards every port, as KubeVirt does.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::binding::MASQUERADE_GUEST;

/// A transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        })
    }
}

/// One port forwarded from the pod address to the same port of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ForwardedPort {
    /// The protocol.
    pub protocol: PortProtocol,
    /// The port number (nonzero).
    pub port: u16,
}

/// The prerouting rules that send new connections arriving on `pod_ifname` to the guest:
/// one per listed port, or a single rule for everything when none is listed.
pub(crate) fn dnat_rules(pod_ifname: &str, ports: &[ForwardedPort]) -> String {
    if ports.is_empty() {
        return format!("        iifname \"{pod_ifname}\" dnat to {MASQUERADE_GUEST}\n");
    }
    let mut sorted = ports.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
        .iter()
        .map(|forwarded| {
            format!(
                "        iifname \"{pod_ifname}\" {} dport {} dnat to {MASQUERADE_GUEST}\n",
                forwarded.protocol, forwarded.port
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ports_forwards_everything() {
        assert_eq!(
            dnat_rules("eth0", &[]),
            "        iifname \"eth0\" dnat to 10.0.2.2\n"
        );
    }

    #[test]
    fn listed_ports_are_forwarded_one_rule_each_in_order() {
        let ports = [
            ForwardedPort {
                protocol: PortProtocol::Udp,
                port: 53,
            },
            ForwardedPort {
                protocol: PortProtocol::Tcp,
                port: 8080,
            },
            ForwardedPort {
                protocol: PortProtocol::Tcp,
                port: 22,
            },
        ];
        assert_eq!(
            dnat_rules("eth0", &ports),
            "        iifname \"eth0\" tcp dport 22 dnat to 10.0.2.2\n\
             \x20       iifname \"eth0\" tcp dport 8080 dnat to 10.0.2.2\n\
             \x20       iifname \"eth0\" udp dport 53 dnat to 10.0.2.2\n"
        );
    }
}
