//! `virtctl port-forward` in cluster mode: each local connection (or standard input and
//! output with `--stdio`, as an ssh `ProxyCommand`) is relayed over its own WebSocket of
//! the instance's `portforward/PORT` subresource, through kube-apiserver, Ironvisor's
//! api-server and the node agent, which connects to the guest's port inside the launcher
//! pod's network namespace. Channel framing as the console: 0 to the guest, 1 from it.

use std::net::{IpAddr, SocketAddr};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, info_span, Instrument};

use crate::cluster::{Cluster, ClusterError, ConsoleSocket};

const TO_GUEST_CHANNEL: u8 = 0;
const FROM_GUEST_CHANNEL: u8 = 1;
const ERROR_CHANNEL: u8 = 3;

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
    /// The cluster refused or could not be reached.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
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

/// Runs `port-forward`: `--stdio` relays one connection, otherwise listens until killed.
pub async fn run(
    cluster: &Cluster,
    target: &str,
    ports: &[String],
    stdio: bool,
    address: IpAddr,
) -> Result<(), PortForwardError> {
    let name = target_name(target)?;
    let pairs = ports
        .iter()
        .map(|p| port_pair(p))
        .collect::<Result<Vec<_>, _>>()?;
    if stdio {
        let [(_, remote)] = pairs.as_slice() else {
            return Err(PortForwardError::StdioPorts(pairs.len()));
        };
        let socket = cluster.port_forward(name, *remote).await?;
        return relay(socket, tokio::io::stdin(), tokio::io::stdout())
            .await
            .map_err(|message| relay_error(cluster, name, *remote, message));
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
        let cluster = cluster.clone();
        let name = name.to_string();
        tasks.push(tokio::spawn(accept_loop(cluster, name, listener, remote)));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Relays every connection accepted on `listener` to the guest's `remote` port.
async fn accept_loop(cluster: Cluster, name: String, listener: TcpListener, remote: u16) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("port-forward: accepting a connection: {error}");
                continue;
            }
        };
        let cluster = cluster.clone();
        let name = name.clone();
        let span = info_span!("port_forward", vm = %name, remote, %peer);
        tokio::spawn(
            async move {
                let socket = match cluster.port_forward(&name, remote).await {
                    Ok(socket) => socket,
                    Err(error) => {
                        eprintln!("port-forward: {error}");
                        return;
                    }
                };
                info!("connection relayed");
                let (from_client, to_client) = client.into_split();
                if let Err(message) = relay(socket, from_client, to_client).await {
                    eprintln!("port-forward: port {remote} of VM {name}: {message}");
                }
            }
            .instrument(span),
        );
    }
}

fn relay_error(cluster: &Cluster, name: &str, port: u16, message: String) -> PortForwardError {
    PortForwardError::Relay {
        vm: format!("{}/{name}", cluster.namespace),
        port,
        message,
    }
}

/// Copies `input` to the guest and the guest to `output` until the server closes the
/// session; an error the server sends on the error channel is returned.
pub async fn relay<R, W>(socket: ConsoleSocket, mut input: R, mut output: W) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut messages) = socket.split();
    let upstream = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match input.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut framed = Vec::with_capacity(n + 1);
            framed.push(TO_GUEST_CHANNEL);
            framed.extend_from_slice(&buffer[..n]);
            if sink.send(Message::binary(framed)).await.is_err() {
                return;
            }
        }
        // End-of-file: an empty message on the input channel half-closes the guest's
        // connection; its answer still comes back until it closes.
        let _ = sink.send(Message::binary(vec![TO_GUEST_CHANNEL])).await;
        std::future::pending::<()>().await;
    };
    let downstream = async {
        while let Some(message) = messages.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(error) => return Err(format!("the connection to the cluster closed: {error}")),
            };
            match data.split_first() {
                // An empty message: the guest sent end-of-file; what the client still
                // sends goes on until the server closes the session.
                Some((&FROM_GUEST_CHANNEL, [])) => {
                    let _ = output.shutdown().await;
                }
                Some((&FROM_GUEST_CHANNEL, rest)) => {
                    if output.write_all(rest).await.is_err() || output.flush().await.is_err() {
                        break;
                    }
                }
                Some((&ERROR_CHANNEL, rest)) if !rest.is_empty() => {
                    return Err(String::from_utf8_lossy(rest).into_owned())
                }
                _ => continue,
            }
        }
        let _ = output.shutdown().await;
        Ok(())
    };
    // Each side's end-of-file only half-closes, so a request and its answer both arrive;
    // the server closes the session once both directions ended.
    tokio::select! {
        result = downstream => result,
        () = upstream => {
            debug!("the connection to the cluster broke while sending");
            Err("the connection to the cluster closed".into())
        }
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
