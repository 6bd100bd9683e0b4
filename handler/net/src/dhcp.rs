//! The guest's DHCP server: one `dnsmasq` per VM, running inside the VM's namespace on the
//! in-namespace bridge, answering only the VM's MAC with one fixed address. DNS is off
//! (`--port=0`); the guest is told the node's upstream name servers instead, the way
//! KubeVirt hands the pod's resolv.conf servers to the guest.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::format_mac;
use crate::netns;
use crate::tool::ToolError;

/// How long dnsmasq gets to exit after SIGTERM, and again after SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Why the DHCP server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// dnsmasq refused to start (bad option, address in use, ...).
    #[error("starting dnsmasq in {netns}: {source}")]
    Start {
        /// Namespace name.
        netns: String,
        /// The failed command.
        #[source]
        source: ToolError,
    },
    /// dnsmasq reported success but no process holds its pid file.
    #[error("dnsmasq in {netns} is not running after start (pid file {pid_file}); see {log_file}")]
    NotRunning {
        /// Namespace name.
        netns: String,
        /// Its pid file.
        pid_file: PathBuf,
        /// Its log file.
        log_file: PathBuf,
    },
    /// Sending a signal failed.
    #[error("sending {signal} to dnsmasq (pid {pid}): {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal.
        signal: Signal,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// dnsmasq survived SIGKILL.
    #[error("dnsmasq (pid {pid}) is still running after SIGTERM and SIGKILL")]
    StillRunning {
        /// The process.
        pid: i32,
    },
    /// A file of the server could not be removed.
    #[error("removing {path}: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The pid file of the VM's dnsmasq; also its identity among processes.
pub(crate) fn pid_file(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.pid")
}

/// The lease file of the VM's dnsmasq.
pub(crate) fn lease_file(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.leases")
}

/// The log file of the VM's dnsmasq (DHCP transactions are logged).
pub(crate) fn log_file(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.log")
}

/// One VM's DHCP server settings.
#[derive(Debug, Clone)]
pub(crate) struct DhcpServer<'a> {
    /// Namespace to run in.
    pub(crate) netns: &'a str,
    /// Interface to serve on (the in-namespace bridge).
    pub(crate) interface: &'a str,
    /// Per-VM directory for pid, lease and log files.
    pub(crate) dir: &'a Path,
    /// The only client MAC that is answered.
    pub(crate) mac: [u8; 6],
    /// The address that client gets.
    pub(crate) client_ip: Ipv4Addr,
    /// Network address of the client's subnet.
    pub(crate) network: Ipv4Addr,
    /// Netmask of the client's subnet.
    pub(crate) netmask: Ipv4Addr,
    /// Default gateway for the client.
    pub(crate) router: Ipv4Addr,
    /// Interface MTU for the client.
    pub(crate) mtu: u32,
    /// DNS servers for the client; none means no DNS option.
    pub(crate) dns_servers: &'a [Ipv4Addr],
    /// Whether the client's subnet is not configured on `interface` (bridge binding), so
    /// dnsmasq must be told the subnet lives on that link (`--shared-network`).
    pub(crate) shared_network: bool,
}

impl DhcpServer<'_> {
    /// The dnsmasq command line (after the program name).
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec![
            // No system configuration, no DNS, nothing outside this namespace's bridge.
            "--conf-file=/dev/null".to_string(),
            "--port=0".to_string(),
            "--no-resolv".to_string(),
            "--no-hosts".to_string(),
            format!("--interface={}", self.interface),
            "--except-interface=lo".to_string(),
            "--bind-interfaces".to_string(),
            format!("--pid-file={}", pid_file(self.dir).display()),
            format!("--dhcp-leasefile={}", lease_file(self.dir).display()),
            format!("--log-facility={}", log_file(self.dir).display()),
            "--log-dhcp".to_string(),
            "--dhcp-authoritative".to_string(),
            // A static range serves only the hosts listed with --dhcp-host.
            format!(
                "--dhcp-range={},static,{},infinite",
                self.network, self.netmask
            ),
            format!(
                "--dhcp-host={},{},infinite",
                format_mac(&self.mac),
                self.client_ip
            ),
            format!("--dhcp-option=option:router,{}", self.router),
            format!("--dhcp-option=option:mtu,{}", self.mtu),
        ];
        if self.shared_network {
            args.push(format!(
                "--shared-network={},{}",
                self.interface, self.network
            ));
        }
        if !self.dns_servers.is_empty() {
            let servers: Vec<String> = self.dns_servers.iter().map(ToString::to_string).collect();
            args.push(format!(
                "--dhcp-option=option:dns-server,{}",
                servers.join(",")
            ));
        }
        args
    }

    /// Starts dnsmasq in the namespace; it daemonizes once its sockets are ready.
    pub(crate) fn start(&self) -> Result<i32, DhcpError> {
        netns::exec(self.netns, "dnsmasq")
            .args(self.args())
            .run()
            .map_err(|source| DhcpError::Start {
                netns: self.netns.to_string(),
                source,
            })?;
        running_pids(self.dir)
            .first()
            .copied()
            .ok_or_else(|| DhcpError::NotRunning {
                netns: self.netns.to_string(),
                pid_file: pid_file(self.dir),
                log_file: log_file(self.dir),
            })
    }
}

/// Processes started with this directory's pid file: the VM's dnsmasq. Matching on the
/// command line rather than trusting the pid file survives stale pid files, reused pids,
/// and a crash between start and the pid file being written.
pub(crate) fn running_pids(dir: &Path) -> Vec<i32> {
    let marker = format!("--pid-file={}", pid_file(dir).display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // Unreadable entries are processes that just exited; zombies have no cmdline.
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    cmdline
                        .split(|b| *b == 0)
                        .any(|arg| arg == marker.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Stops the VM's dnsmasq (SIGTERM, then SIGKILL) and removes its pid file. Does nothing
/// when it is not running.
pub(crate) fn stop(dir: &Path) -> Result<(), DhcpError> {
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let pids = running_pids(dir);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            tracing::debug!(pid, %signal, "stopping dnsmasq");
            match kill(Pid::from_raw(*pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(DhcpError::Signal {
                        pid: *pid,
                        signal,
                        source,
                    })
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while !running_pids(dir).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(pid) = running_pids(dir).first() {
        return Err(DhcpError::StillRunning { pid: *pid });
    }
    let path = pid_file(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DhcpError::Remove { path, source }),
    }
}

/// The name servers in a resolv.conf that a guest behind NAT can reach: IPv4, and not
/// loopback (a node-local caching resolver such as 127.0.0.53 is not reachable from the VM).
pub fn reachable_nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    let mut servers = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next().and_then(|w| w.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        if !addr.is_loopback() && !addr.is_unspecified() && !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    servers
}

/// The node's reachable name servers from `/etc/resolv.conf` (none if it is unreadable).
pub(crate) fn host_nameservers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| reachable_nameservers(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dir: &Path) -> DhcpServer<'_> {
        DhcpServer {
            netns: "iv-test",
            interface: "k6t-eth0",
            dir,
            mac: [0x52, 0x54, 0, 1, 2, 3],
            client_ip: Ipv4Addr::new(10, 0, 2, 2),
            network: Ipv4Addr::new(10, 0, 2, 0),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Ipv4Addr::new(10, 0, 2, 1),
            mtu: 1500,
            dns_servers: &[],
            shared_network: false,
        }
    }

    #[test]
    fn arguments_serve_one_mac_one_address_without_dns() {
        let dir = Path::new("/var/lib/ironvisor/net/iv-test");
        let args = server(dir).args();
        for expected in [
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=k6t-eth0",
            "--bind-interfaces",
            "--pid-file=/var/lib/ironvisor/net/iv-test/dnsmasq.pid",
            "--dhcp-leasefile=/var/lib/ironvisor/net/iv-test/dnsmasq.leases",
            "--dhcp-range=10.0.2.0,static,255.255.255.0,infinite",
            "--dhcp-host=52:54:00:01:02:03,10.0.2.2,infinite",
            "--dhcp-option=option:router,10.0.2.1",
            "--dhcp-option=option:mtu,1500",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--shared-network")));
        assert!(!args.iter().any(|a| a.contains("dns-server")));
    }

    #[test]
    fn bridge_binding_declares_the_shared_network_and_dns() {
        let dir = Path::new("/tmp/x");
        let dns = [Ipv4Addr::new(192, 0, 2, 53)];
        let mut s = server(dir);
        s.client_ip = Ipv4Addr::new(10, 222, 0, 5);
        s.network = Ipv4Addr::new(10, 222, 0, 0);
        s.router = Ipv4Addr::new(10, 222, 0, 1);
        s.shared_network = true;
        s.dns_servers = &dns;
        let args = s.args();
        assert!(args.contains(&"--shared-network=k6t-eth0,10.222.0.0".to_string()));
        assert!(args.contains(&"--dhcp-option=option:dns-server,192.0.2.53".to_string()));
        assert!(args.contains(&"--dhcp-range=10.222.0.0,static,255.255.255.0,infinite".to_string()));
    }

    #[test]
    fn nameservers_skip_loopback_ipv6_and_duplicates() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n\
                    search example.org\nnameserver fd00::1\nnameserver 192.0.2.1\n\
                    nameserver 198.51.100.7 # trailing\n";
        assert_eq!(
            reachable_nameservers(text),
            vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7)]
        );
    }

    #[test]
    fn stop_without_a_server_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(pid_file(dir.path()), "999999\n").unwrap();
        stop(dir.path()).unwrap();
        assert!(!pid_file(dir.path()).exists());
    }

    #[test]
    fn stop_finds_and_ends_the_process_by_its_pid_file_argument() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("--pid-file={}", pid_file(dir.path()).display());
        // `sh -c <script> <arg0> <marker>` puts the marker on the command line; the
        // script waits on a background sleep so the shell itself stays the process.
        let script = "trap 'kill $!; exit 143' TERM; sleep 30 & wait";
        let mut child = std::process::Command::new("sh")
            .args(["-c", script, "fake-dnsmasq", &marker])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = child.id() as i32;
        while !running_pids(dir.path()).contains(&pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // The shell's forked child shares its command line until it execs sleep.
        assert!(running_pids(dir.path()).contains(&pid));
        // Reap in the background so the killed child does not linger as a zombie.
        let reaper = thread::spawn(move || child.wait());
        stop(dir.path()).unwrap();
        assert!(running_pids(dir.path()).is_empty());
        assert!(!reaper.join().unwrap().unwrap().success());
    }
}
