//! End-to-end tests of VM networking with the real CNI plugins, `ip`, `nft` and `dnsmasq`.
//!
//! No VM is booted: a "guest" network namespace, connected by a veth pair to the VM's
//! in-namespace bridge next to the tap, stands in for the guest NIC (its MAC set to the
//! VM's MAC). Busybox `udhcpc` in it is the guest's DHCP client. Traffic stays between
//! namespaces on this machine.
//!
//! Each test uses its own node bridge, subnet, state directory and VM keys so they can run
//! in parallel. They need root and the Debian packages in `handler/net/DEPENDENCIES`, and
//! skip with a message otherwise.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ironvisor_net::{
    load, netns_name, setup, teardown, Binding, ForwardedPort, NetError, NetworkConfig,
    PortProtocol, VmNetwork, VmNetworkRequest, BRIDGE_IFNAME, MASQUERADE_GATEWAY, MASQUERADE_GUEST,
};

const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Why the environment cannot run these tests, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not running as root".into());
    }
    for plugin in ["bridge", "host-local"] {
        if !Path::new(CNI_BIN_DIR).join(plugin).exists() {
            return Some(format!(
                "CNI plugin {CNI_BIN_DIR}/{plugin} missing (apt-get install containernetworking-plugins)"
            ));
        }
    }
    for tool in ["ip", "nft", "dnsmasq", "busybox", "iptables", "sysctl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} not found (see handler/net/DEPENDENCIES)"));
        }
    }
    None
}

macro_rules! require_prerequisites {
    () => {
        if let Some(reason) = missing_prerequisite() {
            panic!("cannot run: {reason} (scripts/install-deps.sh installs what these tests need; run them as root)");
        }
    };
}

/// Runs a command with a time limit; returns (success, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run(program, args);
    assert!(
        ok,
        "`{program} {}` failed: {stderr}{stdout}",
        args.join(" ")
    );
    stdout
}

/// A test's own node network; removes everything it knows of when dropped, also when the
/// test fails.
struct Fixture {
    cfg: NetworkConfig,
    vm_keys: Vec<String>,
    guest_netns: Vec<String>,
    _state: tempfile::TempDir,
}

impl Fixture {
    fn new(bridge: &str, subnet: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig {
            bridge: bridge.into(),
            subnet: subnet.into(),
            cni_bin_dir: CNI_BIN_DIR.into(),
            state_dir: state.path().join("net"),
        };
        // A bridge left by an earlier aborted run would carry a stale address.
        let _ = run("ip", &["link", "del", bridge]);
        Self {
            cfg,
            vm_keys: Vec::new(),
            guest_netns: Vec::new(),
            _state: state,
        }
    }

    fn request(
        &mut self,
        vm_key: &str,
        uid: &str,
        binding: Binding,
        mac: [u8; 6],
    ) -> VmNetworkRequest {
        self.vm_keys.push(vm_key.to_string());
        VmNetworkRequest {
            vm_key: vm_key.into(),
            vm_uid: uid.into(),
            interface: "default".into(),
            binding,
            mac,
            ports: Vec::new(),
            tap_owner: None,
        }
    }

    fn ipam_leases(&self) -> Vec<String> {
        let dir = self.cfg.state_dir.join("ipam").join("ironvisor");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates a guest namespace whose `geth` (with the VM's MAC) is plugged into the VM's
    /// in-namespace bridge, as the tap is.
    fn attach_guest(&mut self, network: &VmNetwork, guest: &str) {
        let _ = run("ip", &["netns", "delete", guest]);
        run_ok("ip", &["netns", "add", guest]);
        self.guest_netns.push(guest.to_string());
        let vm_ns = network.netns_name.as_str();
        run_ok(
            "ip",
            &[
                "-n", vm_ns, "link", "add", "gpeer", "type", "veth", "peer", "name", "geth",
                "netns", guest,
            ],
        );
        run_ok(
            "ip",
            &[
                "-n",
                vm_ns,
                "link",
                "set",
                "gpeer",
                "master",
                BRIDGE_IFNAME,
                "up",
            ],
        );
        let mac = network.mac_string();
        run_ok(
            "ip",
            &["-n", guest, "link", "set", "geth", "address", &mac, "up"],
        );
        run_ok("ip", &["-n", guest, "link", "set", "lo", "up"]);
    }

    fn teardown_all(&mut self) {
        for guest in self.guest_netns.drain(..) {
            let _ = run("ip", &["netns", "delete", &guest]);
        }
        for key in self.vm_keys.drain(..) {
            if let Err(e) = teardown(&self.cfg, &key) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.teardown_all();
        let _ = run("ip", &["link", "del", &self.cfg.bridge]);
    }
}

/// What the DHCP client in the guest namespace was given.
#[derive(Debug)]
struct Lease {
    ip: Ipv4Addr,
    mask: u8,
    router: Ipv4Addr,
    mtu: Option<u32>,
}

/// Runs busybox udhcpc in `guest`; its script configures `geth` and records the lease.
fn dhcp_in_guest(guest: &str, workdir: &Path) -> Lease {
    let record = workdir.join(format!("{guest}.lease"));
    let script = workdir.join(format!("{guest}.udhcpc.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             case \"$1\" in\n\
             bound|renew)\n\
               ip addr add \"$ip/$mask\" dev \"$interface\"\n\
               [ -n \"$router\" ] && ip route add default via \"$router\"\n\
               echo \"$ip $mask $router ${{mtu:-none}}\" > {}\n\
               ;;\n\
             esac\n",
            record.display()
        ),
    )
    .unwrap();
    run_ok("chmod", &["+x", &script.to_string_lossy()]);
    run_ok(
        "ip",
        &[
            "netns",
            "exec",
            guest,
            "busybox",
            "udhcpc",
            "-i",
            "geth",
            "-f",
            "-q",
            "-n",
            "-t",
            "6",
            "-T",
            "1",
            "-O",
            "mtu",
            "-s",
            &script.to_string_lossy(),
        ],
    );
    let text = std::fs::read_to_string(&record).unwrap();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "lease record {text:?}");
    Lease {
        ip: fields[0].parse().unwrap(),
        mask: fields[1].parse().unwrap(),
        router: fields[2].parse().unwrap(),
        mtu: fields[3].parse().ok(),
    }
}

/// Binds a TCP listener on `port` (0: any) inside `guest` on a thread of its own, which
/// then runs `serve` with it; returns the bound port and the thread.
fn listen_in_guest<T: Send + 'static>(
    guest: &str,
    port: u16,
    serve: impl FnOnce(TcpListener) -> T + Send + 'static,
) -> (u16, thread::JoinHandle<T>) {
    let netns_path = PathBuf::from("/var/run/netns").join(guest);
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let ns = std::fs::File::open(&netns_path).unwrap();
        // Only this thread moves into the guest namespace.
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx
            .send(listener.local_addr().unwrap().port())
            .unwrap();
        serve(listener)
    });
    let port = ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    (port, handle)
}

/// Serves one TCP connection from inside `guest`: reads a line, answers `echo: <line>`.
/// Returns the listening port and a handle yielding the peer address it saw.
fn tcp_echo_in_guest(guest: &str, port: u16) -> (u16, thread::JoinHandle<SocketAddr>) {
    listen_in_guest(guest, port, |listener| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("guest accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap();
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        stream
            .write_all(format!("echo: {line}").as_bytes())
            .unwrap();
        peer
    })
}

/// A listener on `port` in the guest for `wait`; the handle says whether any connection
/// reached it.
fn tcp_listener_in_guest(guest: &str, port: u16, wait: Duration) -> thread::JoinHandle<bool> {
    let (_, handle) = listen_in_guest(guest, port, move |listener| {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok(_) => return true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("guest accept: {e}"),
            }
        }
        false
    });
    handle
}

/// Connects from the node (this process's namespace) to `ip:port` and checks the echo.
fn talk_from_node(ip: Ipv4Addr, port: u16) {
    let addr = SocketAddr::from((ip, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting from the node to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"hello").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "echo: hello");
}

/// Opens the VM's tap from inside its namespace the way the launcher does (by name, with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte header), sends an ARP request for the
/// guest gateway as the guest would, and waits for the answer from the VM bridge.
fn arp_through_the_tap(network: &VmNetwork) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    let netns_path = network.netns_path.clone();
    let tap = network.tap.clone();
    let mac = network.mac;
    let (guest_ip, gateway) = (network.guest_ip, network.gateway);
    thread::spawn(move || {
        let ns = std::fs::File::open(&netns_path).unwrap();
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(tap.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq on a valid tun fd.
        let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        assert_eq!(
            ret,
            0,
            "TUNSETIFF {tap}: {}",
            std::io::Error::last_os_error()
        );
        let hdr_len: libc::c_int = 12;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int on a valid tun fd.
        let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        assert_eq!(
            ret,
            0,
            "TUNSETVNETHDRSZ: {}",
            std::io::Error::last_os_error()
        );

        let mut frame = vec![0u8; 12]; // virtio-net header: no offloads
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&guest_ip.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&gateway.octets());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        let mut next_send = Instant::now();
        loop {
            // Repeated like a real guest would: the bridge port may still be coming up.
            if Instant::now() >= next_send {
                tun.write_all(&frame).unwrap();
                next_send = Instant::now() + Duration::from_millis(250);
            }
            match tun.read(&mut buf) {
                Ok(n) if n >= 12 + 42 => {
                    let eth = &buf[12..n];
                    let is_reply = eth[0..6] == mac
                        && eth[12..14] == [0x08, 0x06]
                        && eth[20..22] == [0, 2]
                        && eth[28..32] == gateway.octets();
                    if is_reply {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading the tap: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no ARP reply from {gateway} on {tap}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    })
    .join()
    .unwrap();
}

fn ping_from(netns: &str, target: Ipv4Addr) {
    run_ok(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            &target.to_string(),
        ],
    );
}

/// `pgrep -a` lines of dnsmasq processes whose command line mentions `dir`.
fn dnsmasq_pids_under(dir: &Path) -> String {
    let (_, stdout, _) = run("pgrep", &["-a", "-x", "dnsmasq"]);
    let dir = dir.to_string_lossy();
    stdout
        .lines()
        .filter(|line| line.contains(dir.as_ref()))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Asserts nothing of the VM's network is left on the node.
fn assert_gone(fixture: &Fixture, network: &VmNetwork) {
    let netns_list = run_ok("ip", &["netns", "list"]);
    assert!(
        !netns_list.contains(&network.netns_name),
        "namespace {} left: {netns_list}",
        network.netns_name
    );
    let ports = run_ok("ip", &["-o", "link", "show", "master", &fixture.cfg.bridge]);
    assert!(
        ports.trim().is_empty(),
        "veth left on {}: {ports}",
        fixture.cfg.bridge
    );
    let (tap_on_node, _, _) = run("ip", &["link", "show", "dev", &network.tap]);
    assert!(!tap_on_node, "tap {} visible on the node", network.tap);
    let leases = fixture.ipam_leases();
    assert!(
        !leases.contains(&network.pod_ip.to_string()),
        "IPAM lease of {} left: {leases:?}",
        network.pod_ip
    );
    let vm_dir = fixture.cfg.state_dir.join(&network.netns_name);
    assert!(
        !vm_dir.exists(),
        "state directory {} left",
        vm_dir.display()
    );
    let pids = dnsmasq_pids_under(&fixture.cfg.state_dir);
    assert!(pids.trim().is_empty(), "dnsmasq left: {pids}");
    let nat = run_ok("iptables", &["-t", "nat", "-S", "POSTROUTING"]);
    assert!(
        !nat.contains(&format!("{}/32", network.pod_ip)),
        "ipMasq rule for {} left: {nat}",
        network.pod_ip
    );
    assert!(matches!(load(&fixture.cfg, &network.vm_key), Ok(None)));
}

#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn masquerade_binding_end_to_end() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-masq0", "10.231.1.0/24");
    let mac = [0x52, 0x54, 0x00, 0x31, 0x01, 0x01];
    let req = fx.request(
        "ivtest/masq-e2e",
        "uid-masq-e2e-1",
        Binding::Masquerade,
        mac,
    );
    let network = setup(&fx.cfg, &req).unwrap();

    assert_eq!(network.netns_name, netns_name("ivtest/masq-e2e"));
    assert_eq!(
        network.netns_path,
        PathBuf::from("/var/run/netns").join(&network.netns_name)
    );
    assert_eq!(network.tap, "tap0");
    assert_eq!(network.guest_ip, MASQUERADE_GUEST);
    assert_eq!(network.gateway, MASQUERADE_GATEWAY);
    assert_eq!(network.prefix_len, 24);
    assert_eq!(network.pod_gateway, Ipv4Addr::new(10, 231, 1, 1));
    assert_eq!(network.pod_prefix_len, 24);
    assert_eq!(network.reported_ip(), network.pod_ip);
    let pod = u32::from(network.pod_ip);
    assert!(
        (u32::from(Ipv4Addr::new(10, 231, 1, 2))..u32::from(Ipv4Addr::new(10, 231, 1, 255)))
            .contains(&pod)
    );
    assert_eq!(fx.ipam_leases(), vec![network.pod_ip.to_string()]);

    // The namespace has the pod interface, the tap on the VM bridge and forwarding on.
    let ns = network.netns_name.clone();
    let eth0 = run_ok(
        "ip",
        &["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"],
    );
    assert!(eth0.contains(&format!("{}/24", network.pod_ip)), "{eth0}");
    let tap = run_ok("ip", &["-n", &ns, "-d", "link", "show", "dev", "tap0"]);
    assert!(
        tap.contains(&format!("master {BRIDGE_IFNAME}")) && tap.contains("tun"),
        "{tap}"
    );
    let forwarding = run_ok(
        "ip",
        &["netns", "exec", &ns, "sysctl", "-n", "net.ipv4.ip_forward"],
    );
    assert_eq!(forwarding.trim(), "1");
    let route = run_ok("ip", &["-n", &ns, "route", "show", "default"]);
    assert!(route.contains("via 10.231.1.1 dev eth0"), "{route}");

    // The launcher can open the tap by name inside the namespace, and it is wired to the
    // VM bridge; being persistent, it survives being closed.
    arp_through_the_tap(&network);
    run_ok("ip", &["-n", &ns, "link", "show", "dev", "tap0"]);

    // load after a "daemon restart" returns the same record; setup again is idempotent.
    assert_eq!(load(&fx.cfg, &req.vm_key).unwrap(), Some(network.clone()));
    assert_eq!(setup(&fx.cfg, &req).unwrap(), network);
    // A DHCP server that died is restarted by setting up again.
    let vm_dir = fx.cfg.state_dir.join(&ns);
    let running = dnsmasq_pids_under(&vm_dir);
    let pid = running
        .split_whitespace()
        .next()
        .expect("dnsmasq running")
        .to_string();
    run_ok("kill", &[&pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dnsmasq_pids_under(&vm_dir).is_empty() {
        assert!(Instant::now() < deadline, "dnsmasq {pid} did not exit");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(setup(&fx.cfg, &req).unwrap(), network);
    assert_eq!(dnsmasq_pids_under(&vm_dir).lines().count(), 1);

    let mut other = req.clone();
    other.vm_uid = "uid-masq-e2e-2".into();
    assert!(matches!(
        setup(&fx.cfg, &other),
        Err(NetError::Conflict { .. })
    ));

    // The guest gets 10.0.2.2 by DHCP, reaches the node bridge, and is reachable from the
    // node at the pod IP through the DNAT.
    let work = tempfile::tempdir().unwrap();
    fx.attach_guest(&network, "ivt-guest-masq");
    let lease = dhcp_in_guest("ivt-guest-masq", work.path());
    assert_eq!(lease.ip, MASQUERADE_GUEST, "{lease:?}");
    assert_eq!(lease.mask, 24);
    assert_eq!(lease.router, MASQUERADE_GATEWAY);
    assert_eq!(lease.mtu, Some(network.mtu));
    ping_from("ivt-guest-masq", network.pod_gateway);
    let (port, server) = tcp_echo_in_guest("ivt-guest-masq", 0);
    talk_from_node(network.pod_ip, port);
    let peer = server.join().unwrap();
    // DNAT only: the guest sees the node's real address.
    assert_eq!(peer.ip(), std::net::IpAddr::V4(network.pod_gateway));
    let leases =
        std::fs::read_to_string(fx.cfg.state_dir.join(&ns).join("dnsmasq.leases")).unwrap();
    assert!(leases.contains("52:54:00:31:01:01 10.0.2.2"), "{leases}");

    // Teardown leaves nothing, and is idempotent.
    fx.teardown_all();
    assert_gone(&fx, &network);
    teardown(&fx.cfg, &req.vm_key).unwrap();
}

/// With `ports` listed, only those reach the guest through the pod address (KubeVirt's
/// semantics); another port of the guest stays unreachable.
#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn masquerade_forwards_only_the_listed_ports() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-port0", "10.231.8.0/24");
    let mut req = fx.request(
        "ivtest/masq-ports",
        "uid-masq-ports-1",
        Binding::Masquerade,
        [0x52, 0x54, 0x00, 0x31, 0x08, 0x01],
    );
    req.ports = vec![ForwardedPort {
        protocol: PortProtocol::Tcp,
        port: 8080,
    }];
    let network = setup(&fx.cfg, &req).unwrap();
    let rules = run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &network.netns_name,
            "nft",
            "list",
            "table",
            "ip",
            "ironvisor",
        ],
    );
    assert!(rules.contains("tcp dport 8080 dnat to 10.0.2.2"), "{rules}");

    let work = tempfile::tempdir().unwrap();
    fx.attach_guest(&network, "ivt-guest-port");
    let lease = dhcp_in_guest("ivt-guest-port", work.path());
    assert_eq!(lease.ip, MASQUERADE_GUEST, "{lease:?}");

    // The listed port is forwarded.
    let (port, server) = tcp_echo_in_guest("ivt-guest-port", 8080);
    assert_eq!(port, 8080);
    talk_from_node(network.pod_ip, 8080);
    server.join().unwrap();

    // Another port the guest listens on is not.
    let unlisted = tcp_listener_in_guest("ivt-guest-port", 8081, Duration::from_secs(3));
    let attempt = TcpStream::connect_timeout(
        &SocketAddr::from((network.pod_ip, 8081)),
        Duration::from_secs(2),
    );
    assert!(
        attempt.is_err(),
        "port 8081 reached something through the pod address"
    );
    assert!(
        !unlisted.join().unwrap(),
        "port 8081 was forwarded to the guest"
    );

    fx.teardown_all();
    assert_gone(&fx, &network);
}

#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn bridge_binding_gives_the_guest_the_pod_ip() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-brdg0", "10.231.2.0/24");
    let mac = [0x52, 0x54, 0x00, 0x31, 0x02, 0x01];
    let req = fx.request(
        "ivtest/bridge-e2e",
        "uid-bridge-e2e-1",
        Binding::Bridge,
        mac,
    );
    let network = setup(&fx.cfg, &req).unwrap();
    assert_eq!(network.guest_ip, network.pod_ip);
    assert_eq!(network.gateway, Ipv4Addr::new(10, 231, 2, 1));
    assert_eq!(network.reported_ip(), network.pod_ip);

    let ns = network.netns_name.clone();
    let eth0 = run_ok("ip", &["-n", &ns, "-o", "link", "show", "dev", "eth0"]);
    assert!(eth0.contains(&format!("master {BRIDGE_IFNAME}")), "{eth0}");
    let addrs = run_ok(
        "ip",
        &["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"],
    );
    assert!(addrs.trim().is_empty(), "eth0 still has {addrs}");
    // Through the tap, the guest resolves its gateway, the node bridge, via eth0.
    arp_through_the_tap(&network);

    let work = tempfile::tempdir().unwrap();
    fx.attach_guest(&network, "ivt-guest-brdg");
    let lease = dhcp_in_guest("ivt-guest-brdg", work.path());
    assert_eq!(lease.ip, network.pod_ip, "{lease:?}");
    assert_eq!(lease.mask, 24);
    assert_eq!(lease.router, network.pod_gateway);
    ping_from("ivt-guest-brdg", network.pod_gateway);
    let (port, server) = tcp_echo_in_guest("ivt-guest-brdg", 0);
    talk_from_node(network.pod_ip, port);
    assert_eq!(
        server.join().unwrap().ip(),
        std::net::IpAddr::V4(network.pod_gateway)
    );

    fx.teardown_all();
    assert_gone(&fx, &network);
}

#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn two_vms_at_once_get_different_pod_ips() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-two0", "10.231.3.0/24");
    let reqs = [
        fx.request(
            "ivtest/two-a",
            "uid-two-a",
            Binding::Masquerade,
            [0x52, 0x54, 0, 0x31, 3, 1],
        ),
        fx.request(
            "ivtest/two-b",
            "uid-two-b",
            Binding::Masquerade,
            [0x52, 0x54, 0, 0x31, 3, 2],
        ),
    ];
    // Set up concurrently, as the handler may for two VMs.
    let networks: Vec<VmNetwork> = thread::scope(|s| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|req| {
                let cfg = &fx.cfg;
                s.spawn(move || setup(cfg, req))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    assert_ne!(networks[0].pod_ip, networks[1].pod_ip);
    assert_ne!(networks[0].netns_name, networks[1].netns_name);
    let mut leases = fx.ipam_leases();
    leases.sort();
    let mut expected = vec![
        networks[0].pod_ip.to_string(),
        networks[1].pod_ip.to_string(),
    ];
    expected.sort();
    assert_eq!(leases, expected);
    assert_eq!(
        ironvisor_net::list(&fx.cfg).unwrap(),
        vec!["ivtest/two-a".to_string(), "ivtest/two-b".to_string()]
    );
    // Both namespaces reach the node bridge.
    for network in &networks {
        ping_from(&network.netns_name, network.pod_gateway);
    }

    // Tearing one down leaves the other intact.
    teardown(&fx.cfg, "ivtest/two-a").unwrap();
    assert!(load(&fx.cfg, "ivtest/two-b").unwrap().is_some());
    assert_eq!(fx.ipam_leases(), vec![networks[1].pod_ip.to_string()]);
    fx.teardown_all();
    for network in &networks {
        assert_gone(&fx, network);
    }
}

#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn teardown_recovers_after_the_namespace_was_lost() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-lost0", "10.231.4.0/24");
    let req = fx.request(
        "ivtest/lost",
        "uid-lost-1",
        Binding::Masquerade,
        [0x52, 0x54, 0, 0x31, 4, 1],
    );
    let network = setup(&fx.cfg, &req).unwrap();
    let nat = run_ok("iptables", &["-t", "nat", "-S", "POSTROUTING"]);
    assert!(nat.contains(&format!("{}/32", network.pod_ip)), "{nat}");

    // Someone deletes the namespace behind our back (or the node rebooted).
    run_ok("ip", &["netns", "delete", &network.netns_name]);
    let err = load(&fx.cfg, &req.vm_key).unwrap_err();
    assert!(matches!(err, NetError::Stale { .. }), "{err}");
    assert!(err.to_string().contains("ivtest/lost"), "{err}");

    // dnsmasq is still running in the detached namespace; teardown still finds it, and
    // CNI DEL through a stand-in namespace removes the ipMasq rule and the lease.
    teardown(&fx.cfg, &req.vm_key).unwrap();
    assert_gone(&fx, &network);
}

#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn interrupted_setup_is_redone_by_the_next_setup() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-intr0", "10.231.5.0/24");
    let req = fx.request(
        "ivtest/interrupted",
        "uid-intr-1",
        Binding::Masquerade,
        [0x52, 0x54, 0, 0x31, 5, 1],
    );
    let first = setup(&fx.cfg, &req).unwrap();
    // Make the state look like the daemon died before the last step was recorded.
    let state_file = fx.cfg.state_dir.join(&first.netns_name).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["network"] = serde_json::Value::Null;
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let err = load(&fx.cfg, &req.vm_key).unwrap_err();
    assert!(matches!(err, NetError::Incomplete { .. }), "{err}");

    let second = setup(&fx.cfg, &req).unwrap();
    assert_eq!(load(&fx.cfg, &req.vm_key).unwrap(), Some(second.clone()));
    // The earlier attempt's lease and dnsmasq were released, not leaked.
    assert_eq!(fx.ipam_leases(), vec![second.pod_ip.to_string()]);
    let pids = dnsmasq_pids_under(&fx.cfg.state_dir);
    assert_eq!(pids.lines().count(), 1, "{pids}");
    fx.teardown_all();
    assert_gone(&fx, &second);
}

#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn failure_after_cni_add_rolls_everything_back() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-roll0", "10.231.6.0/24");
    // A plugin directory whose `bridge` does the real ADD, then returns a result without
    // addresses, so setup fails after the namespace, veth and lease exist.
    let plugins = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        Path::new(CNI_BIN_DIR).join("host-local"),
        plugins.path().join("host-local"),
    )
    .unwrap();
    let wrapper = plugins.path().join("bridge");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             out=$({CNI_BIN_DIR}/bridge); rc=$?\n\
             if [ \"$CNI_COMMAND\" = ADD ] && [ $rc -eq 0 ]; then\n\
               echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[],\"ips\":[]}}'; exit 0\n\
             fi\n\
             echo \"$out\"; exit $rc\n"
        ),
    )
    .unwrap();
    run_ok("chmod", &["+x", &wrapper.to_string_lossy()]);
    fx.cfg.cni_bin_dir = plugins.path().to_path_buf();

    let req = fx.request(
        "ivtest/rollback",
        "uid-roll-1",
        Binding::Masquerade,
        [0x52, 0x54, 0, 0x31, 6, 1],
    );
    let err = setup(&fx.cfg, &req).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, NetError::Cni { .. }), "{text}");
    assert!(
        text.contains("ivtest/rollback") && text.contains("no IPv4 address"),
        "{text}"
    );

    let ns = netns_name(&req.vm_key);
    assert!(!run_ok("ip", &["netns", "list"]).contains(&ns));
    assert!(fx.ipam_leases().is_empty(), "{:?}", fx.ipam_leases());
    let ports = run_ok("ip", &["-o", "link", "show", "master", &fx.cfg.bridge]);
    assert!(ports.trim().is_empty(), "{ports}");
    assert!(!fx.cfg.state_dir.join(&ns).exists());
    assert!(load(&fx.cfg, &req.vm_key).unwrap().is_none());
}

#[test]
#[ignore = "needs root, the CNI plugins, ip, nft and dnsmasq (scripts/install-deps.sh)"]
fn missing_plugins_are_reported_before_anything_is_created() {
    require_prerequisites!();
    let mut fx = Fixture::new("ivt-miss0", "10.231.7.0/24");
    fx.cfg.cni_bin_dir = "/nonexistent/cni".into();
    let req = fx.request(
        "ivtest/missing",
        "uid-miss-1",
        Binding::Masquerade,
        [0x52, 0x54, 0, 0x31, 7, 1],
    );
    let err = setup(&fx.cfg, &req).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cni/bridge"), "{err}");
    assert!(!run_ok("ip", &["netns", "list"]).contains(&netns_name(&req.vm_key)));
}
