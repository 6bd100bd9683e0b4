//! `virtctl port-forward`: each local connection (or standard input and output with
//! `--stdio`, as an ssh `ProxyCommand`) is relayed to a port of the VM's guest, which the
//! node agent connects to inside the VM's network namespace. In cluster mode over a
//! WebSocket of the instance's `portforward/PORT` subresource ([`crate::cluster_forward`]),
//! on the standalone node over the daemon's `PortForward` stream
//! ([`crate::node_forward`]). Each direction ends on its own, as TCP's do.

use std::net::SocketAddr;

use ironvisor_handler_api::HandlerClient;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{info, info_span, Instrument};

use crate::cli::PortForwardArgs;
use crate::cluster::{Cluster, ClusterError};

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// A target that is not `vm/NAME`, `vmi/NAME` or `NAME`.
    #[error("{0:?} is not a VM: use vm/NAME, vmi/NAME or NAME")]
    Target(String),
    /// A port pair that does not parse.
    #[error("{0:?} is not PORT or LOCAL:REMOTE (ports 1-65535)")]
    Ports(String),
    /// `--stdio` with other than one port.
    #[error("--stdio relays one port; {0} were given")]
    StdioPorts(usize),
    /// The local port cannot be listened on.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The local address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Standard output cannot be taken over.
    #[error("cannot relay to standard output: {source}")]
    Stdout {
        /// The cause.
        source: std::io::Error,
    },
    /// The cluster refused or could not be reached.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The node daemon refused or could not be reached.
    #[error("port {port} of VM {vm}: {}", crate::commands::detail(source))]
    Node {
        /// The VM.
        vm: String,
        /// The guest port.
        port: u16,
        /// The daemon's answer.
        #[source]
        source: Box<ironvisor_handler_api::ClientError>,
    },
    /// Relaying failed.
    #[error("port {port} of VM {vm}: {message}")]
    Relay {
        /// The VM.
        vm: String,
        /// The guest port.
        port: u16,
        /// What happened.
        message: String,
    },
}

/// The VM name of a `vm/NAME`, `vmi/NAME`, `virtualmachine/NAME`,
/// `virtualmachineinstance/NAME` or plain `NAME` target.
pub fn target_name(target: &str) -> Result<&str, PortForwardError> {
    let name = match target.split_once('/') {
        Some((
            "vm" | "vms" | "vmi" | "vmis" | "virtualmachine" | "virtualmachineinstance",
            name,
        )) => name,
        Some(_) => return Err(PortForwardError::Target(target.into())),
        None => target,
    };
    if name.is_empty() || name.contains('/') {
        return Err(PortForwardError::Target(target.into()));
    }
    Ok(name)
}

/// `LOCAL:REMOTE` or `PORT`: (local, remote).
pub fn port_pair(text: &str) -> Result<(u16, u16), PortForwardError> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let pair = match text.split_once(':') {
        Some((local, remote)) => port(local).zip(port(remote)),
        None => port(text).map(|p| (p, p)),
    };
    pair.ok_or_else(|| PortForwardError::Ports(text.into()))
}

/// Where connections are forwarded through.
#[derive(Clone)]
pub enum Transport {
    /// The cluster's API.
    Cluster(Cluster),
    /// The standalone node's daemon, for VMs of `namespace`.
    Node {
        /// The daemon client.
        client: HandlerClient,
        /// The VM's namespace.
        namespace: String,
    },
}

impl Transport {
    /// Relays one connection to the guest's `port` of VM `name`: `input` to the guest, the
    /// guest to `output`, until both ended.
    pub async fn forward<R, W>(
        &self,
        name: &str,
        port: u16,
        input: R,
        output: W,
    ) -> Result<(), PortForwardError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let relay_error = |namespace: &str, message: String| PortForwardError::Relay {
            vm: format!("{namespace}/{name}"),
            port,
            message,
        };
        match self {
            Self::Cluster(cluster) => {
                let socket = cluster.port_forward(name, port).await?;
                info!("connection relayed");
                crate::cluster_forward::relay(socket, input, output)
                    .await
                    .map_err(|message| relay_error(&cluster.namespace, message))
            }
            Self::Node { client, namespace } => {
                crate::node_forward::relay(client, namespace, name, port, input, output).await
            }
        }
    }
}

/// Runs `port-forward`: `--stdio` relays one connection, otherwise listens until killed.
pub async fn run(transport: &Transport, args: &PortForwardArgs) -> Result<(), PortForwardError> {
    let (target, ports, stdio, address) = (&args.target, &args.ports, args.stdio, args.address);
    let name = target_name(target)?;
    let pairs = ports
        .iter()
        .map(|p| port_pair(p))
        .collect::<Result<Vec<_>, _>>()?;
    if stdio {
        let [(_, remote)] = pairs.as_slice() else {
            return Err(PortForwardError::StdioPorts(pairs.len()));
        };
        let output = stdio_output().map_err(|source| PortForwardError::Stdout { source })?;
        return transport
            .forward(name, *remote, tokio::io::stdin(), output)
            .await;
    }
    let mut listeners = Vec::new();
    for (local, remote) in pairs {
        let at = SocketAddr::new(address, local);
        let listener = TcpListener::bind(at)
            .await
            .map_err(|source| PortForwardError::Listen {
                address: at,
                source,
            })?;
        println!(
            "Forwarding from {} -> {remote}",
            listener.local_addr().unwrap_or(at)
        );
        listeners.push((listener, remote));
    }
    let mut tasks = Vec::new();
    for (listener, remote) in listeners {
        let transport = transport.clone();
        let name = name.to_string();
        tasks.push(tokio::spawn(accept_loop(transport, name, listener, remote)));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Standard output as a file this relay owns alone: fd 1 itself is pointed at /dev/null,
/// so dropping the file closes the last descriptor of the pipe and its reader sees the
/// guest's end-of-file (tokio's stdout cannot be closed).
fn stdio_output() -> std::io::Result<tokio::fs::File> {
    use std::os::fd::AsFd;
    let own = std::io::stdout().as_fd().try_clone_to_owned()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null).map_err(std::io::Error::from)?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(own)))
}

/// Relays every connection accepted on `listener` to the guest's `remote` port.
async fn accept_loop(transport: Transport, name: String, listener: TcpListener, remote: u16) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("port-forward: accepting a connection: {error}");
                continue;
            }
        };
        let transport = transport.clone();
        let name = name.clone();
        let span = info_span!("port_forward", vm = %name, remote, %peer);
        tokio::spawn(
            async move {
                let (from_client, to_client) = client.into_split();
                if let Err(error) = transport
                    .forward(&name, remote, from_client, to_client)
                    .await
                {
                    eprintln!("port-forward: {error}");
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_ports() {
        assert_eq!(target_name("vm/small").unwrap(), "small");
        assert_eq!(target_name("vmi/small").unwrap(), "small");
        assert_eq!(target_name("small").unwrap(), "small");
        for bad in ["pod/small", "vm/", "vm/a/b", ""] {
            assert!(target_name(bad).is_err(), "{bad}");
        }
        assert_eq!(port_pair("8080:80").unwrap(), (8080, 80));
        assert_eq!(port_pair("22").unwrap(), (22, 22));
        for bad in ["0", "x", "1:", ":2", "70000", "1:2:3"] {
            let error = port_pair(bad).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
