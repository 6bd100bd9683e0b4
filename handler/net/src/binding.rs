//! Plumbing inside the VM's network namespace that connects the guest tap to the pod
//! interface: KubeVirt's masquerade binding (NAT behind a private link) and bridge binding
//! (the pod interface bridged to the guest).

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::cni::{Attachment, POD_IFNAME};
use crate::netns;
use crate::ports::{self, ForwardedPort};
use crate::tool::{Invocation, ToolError};

/// Bridge inside the namespace that the tap (and, for bridge binding, eth0) is enslaved to.
pub const BRIDGE_IFNAME: &str = "k6t-eth0";
/// The persistent tap the launcher opens by name from inside the namespace.
pub const TAP_IFNAME: &str = "tap0";
/// Address of [`BRIDGE_IFNAME`] with masquerade binding; the guest's gateway.
pub const MASQUERADE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// The guest's address with masquerade binding.
pub const MASQUERADE_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Prefix length of the masquerade link.
pub const MASQUERADE_PREFIX_LEN: u8 = 24;
/// Link-local address given to [`BRIDGE_IFNAME`] with bridge binding, only so that the
/// DHCP server has an address to answer from (KubeVirt uses the same one).
pub const BRIDGE_BINDING_SERVER: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);
/// Name of the nftables table this crate owns in each namespace.
const NFT_TABLE: &str = "ironvisor";

/// Why the plumbing inside the namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// A tool failed while doing `step`.
    #[error("{step} in {netns}: {source}")]
    Tool {
        /// What was being done.
        step: &'static str,
        /// Namespace name.
        netns: String,
        /// The failed command.
        #[source]
        source: ToolError,
    },
    /// `ip -j link show` printed something unexpected.
    #[error("reading interface {ifname} in {netns}: {problem}")]
    LinkInfo {
        /// Interface name.
        ifname: &'static str,
        /// Namespace name.
        netns: String,
        /// What was unexpected.
        problem: String,
    },
}

/// What the namespace plumbing tells the DHCP server and the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    /// MTU of the pod interface, which the guest NIC gets too.
    pub(crate) mtu: u32,
}

fn step(netns: &str, step: &'static str, invocation: Invocation) -> Result<(), BindingError> {
    invocation
        .run()
        .map(drop)
        .map_err(|source| BindingError::Tool {
            step,
            netns: netns.to_string(),
            source,
        })
}

/// Reads the MTU of `ifname` in the namespace.
pub(crate) fn link_info(netns: &str, ifname: &'static str) -> Result<LinkInfo, BindingError> {
    #[derive(Deserialize)]
    struct Link {
        mtu: u32,
    }
    let output = netns::ip(netns)
        .args(["-j", "link", "show", "dev", ifname])
        .run()
        .map_err(|source| BindingError::Tool {
            step: "reading the pod interface",
            netns: netns.to_string(),
            source,
        })?;
    let links: Vec<Link> =
        serde_json::from_str(&output.stdout).map_err(|e| BindingError::LinkInfo {
            ifname,
            netns: netns.to_string(),
            problem: format!("{e}; output was {:?}", output.stdout),
        })?;
    let link = links.first().ok_or_else(|| BindingError::LinkInfo {
        ifname,
        netns: netns.to_string(),
        problem: "no such interface".to_string(),
    })?;
    Ok(LinkInfo { mtu: link.mtu })
}

/// Brings up loopback, creates the in-namespace bridge and the persistent tap enslaved to
/// it, all with the pod interface's MTU. Returns that MTU.
fn bridge_and_tap(netns: &str, tap_owner: Option<u32>) -> Result<LinkInfo, BindingError> {
    step(
        netns,
        "bringing up loopback",
        netns::ip(netns).args(["link", "set", "lo", "up"]),
    )?;
    let info = link_info(netns, POD_IFNAME)?;
    let mtu = info.mtu.to_string();
    step(
        netns,
        "creating the VM bridge",
        netns::ip(netns).args(["link", "add", BRIDGE_IFNAME, "mtu", &mtu, "type", "bridge"]),
    )?;
    let mut create_tap = netns::ip(netns).args(["tuntap", "add", "dev", TAP_IFNAME, "mode", "tap"]);
    if let Some(uid) = tap_owner {
        // Its user and group may attach to it without CAP_NET_ADMIN.
        let id = uid.to_string();
        create_tap = create_tap.args(["user", id.as_str(), "group", id.as_str()]);
    }
    step(netns, "creating the tap", create_tap)?;
    step(
        netns,
        "attaching the tap to the VM bridge",
        netns::ip(netns).args([
            "link",
            "set",
            "dev",
            TAP_IFNAME,
            "mtu",
            &mtu,
            "master",
            BRIDGE_IFNAME,
            "up",
        ]),
    )?;
    Ok(info)
}

/// Masquerade binding: `k6t-eth0` with 10.0.2.1/24 and the tap, IPv4 forwarding, DNAT of
/// everything arriving on eth0 to the guest and masquerade of the guest leaving on eth0.
pub(crate) fn setup_masquerade(
    netns: &str,
    ports: &[ForwardedPort],
    tap_owner: Option<u32>,
) -> Result<LinkInfo, BindingError> {
    let info = bridge_and_tap(netns, tap_owner)?;
    let gateway = format!("{MASQUERADE_GATEWAY}/{MASQUERADE_PREFIX_LEN}");
    step(
        netns,
        "addressing the VM bridge",
        netns::ip(netns).args(["addr", "add", &gateway, "dev", BRIDGE_IFNAME]),
    )?;
    step(
        netns,
        "bringing up the VM bridge",
        netns::ip(netns).args(["link", "set", "dev", BRIDGE_IFNAME, "up"]),
    )?;
    step(
        netns,
        "enabling IPv4 forwarding",
        netns::exec(netns, "sysctl").args(["-q", "-w", "net.ipv4.ip_forward=1"]),
    )?;
    step(
        netns,
        "loading the masquerade nftables rules",
        netns::exec(netns, "nft")
            .args(["-f", "-"])
            .stdin(masquerade_ruleset(ports)),
    )?;
    Ok(info)
}

/// Bridge binding: eth0 loses its address and joins `k6t-eth0` with the tap, so the guest
/// is on the pod network itself; the bridge gets a link-local address for the DHCP server.
pub(crate) fn setup_bridge(netns: &str, tap_owner: Option<u32>) -> Result<LinkInfo, BindingError> {
    let info = bridge_and_tap(netns, tap_owner)?;
    step(
        netns,
        "removing the pod address from eth0",
        netns::ip(netns).args(["addr", "flush", "dev", POD_IFNAME]),
    )?;
    step(
        netns,
        "attaching eth0 to the VM bridge",
        netns::ip(netns).args(["link", "set", "dev", POD_IFNAME, "master", BRIDGE_IFNAME]),
    )?;
    // A node bridge in hairpin mode (the CNI bridge plugin's hairpinMode, which kube-proxy
    // needs) sends the guest's broadcasts back in through eth0; learning the guest's MAC
    // there would send every reply to the guest back out of eth0. Only the tap learns.
    step(
        netns,
        "turning off MAC learning on eth0",
        netns::ip(netns).args([
            "link",
            "set",
            "dev",
            POD_IFNAME,
            "type",
            "bridge_slave",
            "learning",
            "off",
        ]),
    )?;
    let server = format!("{BRIDGE_BINDING_SERVER}/32");
    step(
        netns,
        "addressing the VM bridge",
        netns::ip(netns).args(["addr", "add", &server, "dev", BRIDGE_IFNAME]),
    )?;
    step(
        netns,
        "bringing up the VM bridge",
        netns::ip(netns).args(["link", "set", "dev", BRIDGE_IFNAME, "up"]),
    )?;
    step(
        netns,
        "loading the bridge nftables rules",
        netns::exec(netns, "nft")
            .args(["-f", "-"])
            .stdin(bridge_ruleset()),
    )?;
    Ok(info)
}

/// Puts the pod address back on eth0 (bridge binding removed it) so that CNI DEL finds the
/// address whose masquerade rules it must remove. Idempotent.
pub(crate) fn restore_pod_address(
    netns: &str,
    attachment: &Attachment,
) -> Result<(), BindingError> {
    let address = format!("{}/{}", attachment.address, attachment.prefix_len);
    step(
        netns,
        "restoring the pod address on eth0",
        netns::ip(netns).args(["addr", "replace", &address, "dev", POD_IFNAME]),
    )
}

/// Gives a fresh namespace an `eth0` carrying the pod address of a namespace that was
/// lost, so CNI DEL finds the address whose masquerade rules it must remove.
pub(crate) fn stand_in_pod_interface(
    netns: &str,
    attachment: &Attachment,
) -> Result<(), BindingError> {
    step(
        netns,
        "creating a stand-in pod interface",
        netns::ip(netns).args([
            "link",
            "add",
            POD_IFNAME,
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ]),
    )?;
    let address = format!("{}/{}", attachment.address, attachment.prefix_len);
    step(
        netns,
        "addressing the stand-in pod interface",
        netns::ip(netns).args(["addr", "add", &address, "dev", POD_IFNAME]),
    )
}

/// The address the cluster's CNI gave the pod interface of an existing namespace (cluster
/// mode, where the kubelet ran CNI ADD): eth0's IPv4 address and the default gateway.
pub(crate) fn pod_attachment(netns: &str) -> Result<Attachment, BindingError> {
    let read = |step: &'static str, invocation: Invocation| {
        invocation
            .run()
            .map(|output| output.stdout)
            .map_err(|source| BindingError::Tool {
                step,
                netns: netns.to_string(),
                source,
            })
    };
    let links = read(
        "reading the pod address",
        netns::ip(netns).args(["-j", "addr", "show", "dev", POD_IFNAME]),
    )?;
    let routes = read(
        "reading the pod's default route",
        netns::ip(netns).args(["-j", "-4", "route", "show", "default"]),
    )?;
    parse_attachment(&links, &routes).map_err(|problem| BindingError::LinkInfo {
        ifname: POD_IFNAME,
        netns: netns.to_string(),
        problem,
    })
}

/// The pod address out of `ip -j addr show dev eth0` and the gateway out of
/// `ip -j -4 route show default`.
fn parse_attachment(links: &str, routes: &str) -> Result<Attachment, String> {
    #[derive(Deserialize)]
    struct AddrInfo {
        family: String,
        /// IPv4 or IPv6 (both families are listed).
        local: Option<String>,
        prefixlen: u8,
    }
    #[derive(Deserialize)]
    struct Link {
        addr_info: Vec<AddrInfo>,
    }
    #[derive(Deserialize)]
    struct Route {
        gateway: Option<Ipv4Addr>,
    }
    let parsed: Vec<Link> =
        serde_json::from_str(links).map_err(|e| format!("{e}; output was {links:?}"))?;
    let (address, prefix_len) = parsed
        .iter()
        .flat_map(|link| &link.addr_info)
        .filter(|a| a.family == "inet")
        .find_map(|a| Some((a.local.as_deref()?.parse::<Ipv4Addr>().ok()?, a.prefixlen)))
        .ok_or("no IPv4 address (did the cluster's CNI configure it?)")?;
    let parsed: Vec<Route> = serde_json::from_str(routes)
        .map_err(|e| format!("default route: {e}; output was {routes:?}"))?;
    let gateway = parsed
        .iter()
        .find_map(|r| r.gateway)
        .ok_or("no IPv4 default route")?;
    Ok(Attachment {
        address,
        prefix_len,
        gateway,
    })
}

/// Undoes a binding that was set up (perhaps half-way) in a namespace that stays, such as
/// a launcher pod's: the VM bridge, the tap and the nftables table go, and the pod address
/// is back on eth0. Best effort: each step runs whatever the one before did.
pub(crate) fn reset(netns: &str, attachment: &Attachment) {
    let steps = [
        netns::ip(netns).args(["link", "del", BRIDGE_IFNAME]),
        netns::ip(netns).args(["link", "del", TAP_IFNAME]),
        netns::exec(netns, "nft").args(["delete", "table", "ip", NFT_TABLE]),
        netns::exec(netns, "nft").args(["delete", "table", "bridge", NFT_TABLE]),
    ];
    for invocation in steps {
        if let Err(error) = invocation.run() {
            tracing::debug!(%error, "reset step had nothing to undo");
        }
    }
    if let Err(error) = restore_pod_address(netns, attachment) {
        tracing::warn!(%error, "pod address not restored");
    }
}

/// The masquerade NAT rules: new connections arriving on eth0 go to the guest (to the
/// listed ports only, when `ports` lists any), and the guest's connections leave eth0 with
/// the pod address.
pub(crate) fn masquerade_ruleset(ports: &[ForwardedPort]) -> String {
    let dnat = ports::dnat_rules(POD_IFNAME, ports);
    format!(
        "table ip {NFT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
{dnat}    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{POD_IFNAME}\" ip saddr {MASQUERADE_GUEST} masquerade
    }}
}}
"
    )
}

/// The bridge-binding filter: DHCP requests from other VMs on the node bridge never reach
/// this namespace's DHCP server, and the guest's DHCP requests stay in the namespace.
pub(crate) fn bridge_ruleset() -> String {
    format!(
        "table bridge {NFT_TABLE} {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname \"{POD_IFNAME}\" udp dport 67 drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        oifname \"{POD_IFNAME}\" udp dport 67 drop
        iifname \"{POD_IFNAME}\" udp dport 67 drop
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortProtocol;

    #[test]
    fn the_pod_address_is_the_ipv4_one_of_eth0_and_the_gateway_the_default_route() {
        let links = r#"[{"ifindex":2,"ifname":"eth0","mtu":1500,"addr_info":[
            {"family":"inet6","local":"fe80::1","prefixlen":64},
            {"family":"inet","local":"10.244.0.7","prefixlen":24}]}]"#;
        let routes = r#"[{"dst":"default","gateway":"10.244.0.1","dev":"eth0"}]"#;
        let attachment = parse_attachment(links, routes).unwrap();
        assert_eq!(attachment.address, Ipv4Addr::new(10, 244, 0, 7));
        assert_eq!(attachment.prefix_len, 24);
        assert_eq!(attachment.gateway, Ipv4Addr::new(10, 244, 0, 1));
        let v6_only = r#"[{"addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        assert!(parse_attachment(v6_only, routes)
            .unwrap_err()
            .contains("no IPv4 address"));
        assert!(parse_attachment(links, "[]")
            .unwrap_err()
            .contains("no IPv4 default route"));
    }

    #[test]
    fn masquerade_rules_dnat_inbound_and_masquerade_outbound() {
        let rules = masquerade_ruleset(&[]);
        assert!(rules.contains("table ip ironvisor"));
        assert!(rules.contains("iifname \"eth0\" dnat to 10.0.2.2"));
        assert!(rules.contains("oifname \"eth0\" ip saddr 10.0.2.2 masquerade"));
        assert!(rules.contains("hook prerouting priority dstnat"));
        assert!(rules.contains("hook postrouting priority srcnat"));
    }

    #[test]
    fn bridge_rules_keep_dhcp_local() {
        let rules = bridge_ruleset();
        assert!(rules.contains("table bridge ironvisor"));
        assert!(rules.contains("iifname \"eth0\" udp dport 67 drop"));
        assert!(rules.contains("oifname \"eth0\" udp dport 67 drop"));
    }

    /// `nft -c` parses and checks rules without loading them (needs root and nftables).
    #[test]
    #[ignore = "needs root and nft (nftables): nft -c checks rules as root"]
    fn rulesets_pass_nft_check() {
        assert!(
            crate::tool::is_executable(std::ffi::OsStr::new("nft")),
            "nft is not installed (nftables; scripts/install-deps.sh installs it)"
        );
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "nft -c needs root: run the tests as root, as scripts/test-all.sh does"
        );
        for rules in [
            masquerade_ruleset(&[]),
            masquerade_ruleset(&[
                ForwardedPort {
                    protocol: PortProtocol::Tcp,
                    port: 22,
                },
                ForwardedPort {
                    protocol: PortProtocol::Udp,
                    port: 5353,
                },
            ]),
            bridge_ruleset(),
        ] {
            let result = Invocation::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(rules.clone())
                .run();
            assert!(result.is_ok(), "{rules}\n{result:?}");
        }
    }
}
