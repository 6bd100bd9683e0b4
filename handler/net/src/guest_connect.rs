//! A TCP connection to a port of a guest, made from inside the network namespace its
//! launcher runs in, where the guest's private address is reachable (masquerade: behind
//! NAT; bridge: on the pod's link). Used by port forwarding: the connected socket stays in
//! that namespace after the connecting thread is gone, and is used from anywhere.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::pod::pod_netns_name;
use crate::{netns, state};

/// How long connecting to a guest's port may take, in both modes (a guest that does not
/// answer is reported, not waited for).
pub const GUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the guest port cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum GuestConnectError {
    /// The node agent has not wired the instance's launcher pod (yet).
    #[error("the network of instance {vm_uid} is not wired on this node")]
    NotWired {
        /// The instance UID.
        vm_uid: String,
    },
    /// The wiring record cannot be read.
    #[error("the network record of instance {vm_uid}: {source}")]
    State {
        /// The instance UID.
        vm_uid: String,
        /// The cause.
        #[source]
        source: state::StateError,
    },
    /// The namespace cannot be entered.
    #[error("entering the network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Nothing accepts on the guest's port (or it does not answer in time).
    #[error("connecting to the guest at {address}: {source}")]
    Connect {
        /// The guest's address and port.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Connects to `port` of the guest of the launcher pod wired for instance `vm_uid`.
pub fn pod_guest_connect(
    state_dir: &Path,
    vm_uid: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, GuestConnectError> {
    let ns = pod_netns_name(vm_uid);
    let recorded =
        state::read(&state::vm_dir(state_dir, &ns)).map_err(|source| GuestConnectError::State {
            vm_uid: vm_uid.to_string(),
            source,
        })?;
    let Some(network) = recorded.and_then(|st| st.network) else {
        return Err(GuestConnectError::NotWired {
            vm_uid: vm_uid.to_string(),
        });
    };
    connect_in_netns(&netns::path(&ns), network.guest_ip, port, timeout)
}

/// Connects to `ip:port` from inside the network namespace at `netns_path`, on a thread
/// of its own (a thread's namespace is its own; the caller's threads are not moved).
pub fn connect_in_netns(
    netns_path: &Path,
    ip: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, GuestConnectError> {
    let address = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let netns_error = |source| GuestConnectError::Netns {
        path: netns_path.to_path_buf(),
        source,
    };
    let namespace = std::fs::File::open(netns_path).map_err(netns_error)?;
    let connecting = std::thread::Builder::new()
        .name("guest-connect".into())
        .spawn(
            move || -> Result<std::io::Result<TcpStream>, std::io::Error> {
                setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(TcpStream::connect_timeout(&address, timeout))
            },
        )
        .map_err(netns_error)?;
    match connecting.join() {
        Ok(Ok(Ok(stream))) => Ok(stream),
        Ok(Ok(Err(source))) => Err(GuestConnectError::Connect { address, source }),
        Ok(Err(source)) => Err(netns_error(source)),
        Err(_) => Err(netns_error(std::io::Error::other(
            "the connecting thread ended abnormally",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_or_wiring_is_named() {
        let error = connect_in_netns(
            Path::new("/nonexistent/netns"),
            Ipv4Addr::LOCALHOST,
            22,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/netns"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let error = pod_guest_connect(dir.path(), "uid-1", 22, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(error, GuestConnectError::NotWired { .. }),
            "{error}"
        );
    }

    #[test]
    fn connects_inside_the_namespace_it_is_given() {
        // This process's own namespace: a listener here is reached through it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = connect_in_netns(
            Path::new("/proc/self/ns/net"),
            Ipv4Addr::LOCALHOST,
            port,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap().port(), port);
        drop(listener);
        let error = connect_in_netns(
            Path::new("/proc/self/ns/net"),
            Ipv4Addr::LOCALHOST,
            port,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains(&format!("127.0.0.1:{port}")),
            "{error}"
        );
    }
}
