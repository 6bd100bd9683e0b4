//! The pod network through the real CNI plugins (`bridge` + `host-local`): the launcher
//! runs in the VM's network namespace, the VMI reports the pod IP and MAC, and stop and
//! delete leave no namespace, veth, lease or DHCP server behind.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{manifest, vm, wait_for, Daemon, Options};

fn tools_present() -> bool {
    common::is_root()
        && Path::new("/usr/lib/cni/bridge").exists()
        && Path::new("/usr/lib/cni/host-local").exists()
        && ["ip", "nft", "dnsmasq"].iter().all(|tool| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn netns_list() -> String {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

fn links() -> String {
    Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// Removes the node bridge the CNI plugin created for this test.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
async fn pod_network_is_set_up_reported_and_torn_down() {
    assert!(
        tools_present(),
        "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"
    );
    // A bridge and subnet of its own, so parallel runs do not meet.
    let n = std::process::id() % 200 + 20;
    let bridge = Bridge(format!("ivt{n}"));
    let daemon = Daemon::start(Options {
        network: Some((bridge.0.clone(), format!("10.{n}.77.0/24"))),
        ..Options::default()
    });
    let client = daemon.client().await;
    // No autoattachPodInterface: false here, so defaulting adds the pod network with a
    // masquerade interface named "default".
    let yaml = manifest("net", "Manual", "").replace(
        "        devices:\n          autoattachPodInterface: false\n",
        "        devices:\n          interfaces:\n            - name: default\n              masquerade: {}\n              macAddress: \"02:00:00:aa:bb:cc\"\n",
    ).replace(
        "      terminationGracePeriodSeconds: 5\n",
        "      terminationGracePeriodSeconds: 5\n      networks:\n        - name: default\n          pod: {}\n",
    );
    client.apply(yaml, "net.yaml".into()).await.unwrap();
    client.start(vm("net")).await.unwrap();
    let view = wait_for(&client, "net", "Running", |v| v.status == "Running").await;
    assert!(
        view.ip.starts_with(&format!("10.{n}.77.")),
        "ip {:?}",
        view.ip
    );
    let vmi = common::vmi_json(&view);
    assert_eq!(vmi["status"]["interfaces"][0]["mac"], "02:00:00:aa:bb:cc");
    assert_eq!(vmi["status"]["interfaces"][0]["name"], "default");

    // The launcher runs inside the VM's namespace and was given its tap and MAC.
    let netns = ironvisor_net::netns_name("default/net");
    assert!(netns_list().contains(&netns), "{}", netns_list());
    let pid = vmi["status"]["launcherPid"].as_u64().unwrap();
    let launcher_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    let vm_ns = std::fs::metadata(format!("/var/run/netns/{netns}"))
        .unwrap()
        .ino();
    assert_eq!(
        launcher_ns, vm_ns,
        "the launcher is not in the VM's network namespace"
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(daemon.data_dir.join("vms/default/net/launcher.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["nets"][0]["tap"], "tap0");
    assert_eq!(config["nets"][0]["mac"], "02:00:00:aa:bb:cc");

    // Stop: the namespace, its veth and the lease go.
    client.stop(vm("net"), false, 0).await.unwrap();
    wait_for(&client, "net", "Stopped", |v| v.status == "Stopped").await;
    assert!(
        !netns_list().contains(&netns),
        "namespace left: {}",
        netns_list()
    );
    let leases = daemon.data_dir.join("net/ipam");
    let leased: Vec<_> = walk(&leases)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("10."))
        })
        .collect();
    assert!(leased.is_empty(), "leases left: {leased:?}");

    // Start again, then delete: nothing is left either.
    client.start(vm("net")).await.unwrap();
    wait_for(&client, "net", "Running", |v| v.status == "Running").await;
    client.delete(vm("net")).await.unwrap();
    assert!(
        !netns_list().contains(&netns),
        "namespace left: {}",
        netns_list()
    );
    let veths: Vec<String> = links()
        .lines()
        .filter(|l| l.contains(&format!("master {}", bridge.0)))
        .map(str::to_string)
        .collect();
    assert!(veths.is_empty(), "veths left on the bridge: {veths:?}");
    assert!(!daemon.data_dir.join("vms/default/net").exists());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
