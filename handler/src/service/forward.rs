//! Port forwarding on the standalone node: a TCP connection to a port of a VM's guest,
//! made from inside the VM's network namespace (where the guest's private address is
//! reachable), relayed over the `PortForward` stream. Each direction ends on its own, as
//! TCP's do, so a request and its answer both arrive.

use ironvisor_handler_api::proto::{PortForwardChunk, PortForwardRequest};
use ironvisor_net::GuestConnectError;
use tokio::net::TcpStream;

use super::*;

impl HandlerService {
    /// Connects to `port` of the running guest of `key` and relays `input` to it and its
    /// bytes back, until both directions ended or the client went away.
    pub(super) async fn forward_port(
        &self,
        key: &VmKey,
        port: u32,
        input: Streaming<PortForwardRequest>,
    ) -> Result<BoxStream<PortForwardChunk>, ServiceError> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(ServiceError::ForwardPort { port })?;
        let snap = self.snapshot(key).await?;
        if snap.launcher.is_none() {
            return Err(ServiceError::NotRunning {
                key: key.clone(),
                detail: "",
            });
        }
        let network = ironvisor_net::load(&self.runtime.context().network, &key.to_string())
            .map_err(|error| ServiceError::Forward {
                key: key.clone(),
                port,
                reason: error.to_string(),
            })?
            .ok_or_else(|| ServiceError::Forward {
                key: key.clone(),
                port,
                reason: "the VM has no network interface".into(),
            })?;
        let (netns, guest_ip) = (network.netns_path.clone(), network.guest_ip);
        let connected = tokio::task::spawn_blocking(move || {
            ironvisor_net::connect_in_netns(
                &netns,
                guest_ip,
                port,
                ironvisor_net::GUEST_CONNECT_TIMEOUT,
            )
        })
        .await
        .map_err(|error| ServiceError::Forward {
            key: key.clone(),
            port,
            reason: error.to_string(),
        })?;
        let guest = connected
            .and_then(|stream| {
                stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream))
                    .map_err(|source| GuestConnectError::Connect {
                        address: std::net::SocketAddr::from((guest_ip, port)),
                        source,
                    })
            })
            .map_err(|error| ServiceError::Forward {
                key: key.clone(),
                port,
                reason: error.to_string(),
            })?;
        info!(vm = %key, port, "port forward connected");
        let (reader, writer) = guest.into_split();
        let (tx, rx) = mpsc::channel::<Result<PortForwardChunk, Status>>(64);
        tokio::spawn(relay(reader, writer, input, tx).in_current_span());
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Copies the guest's bytes to `tx` and `input` to the guest until both ended; the
/// client going away ends both.
async fn relay(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut input: Streaming<PortForwardRequest>,
    tx: mpsc::Sender<Result<PortForwardChunk, Status>>,
) {
    let from_guest = async {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    let chunk = PortForwardChunk {
                        data: buffer[..n].to_vec(),
                        eof: false,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return (total, false);
                    }
                }
                Err(error) => {
                    debug!(%error, "reading from the guest failed");
                    break;
                }
            }
        }
        let eof = PortForwardChunk {
            data: Vec::new(),
            eof: true,
        };
        (total, tx.send(Ok(eof)).await.is_ok())
    };
    // The client's end-of-file is a request marked `eof` or the end of its request stream;
    // only a broken stream means it went away.
    let to_guest = async {
        let mut total = 0usize;
        let mut client_alive = true;
        while let Some(message) = input.next().await {
            match message {
                Ok(request) => {
                    total += request.data.len();
                    if (!request.data.is_empty() && writer.write_all(&request.data).await.is_err())
                        || request.eof
                    {
                        break;
                    }
                }
                Err(status) => {
                    debug!(%status, "the port forward's input broke");
                    client_alive = false;
                    break;
                }
            }
        }
        let _ = writer.shutdown().await;
        (total, client_alive)
    };
    tokio::pin!(from_guest, to_guest);
    let mut guest_side = None;
    let mut client_side = None;
    // Both sides ending ends the session; the client going away (its input stream broke
    // or the answer cannot be delivered) ends it at once.
    while guest_side.is_none() || client_side.is_none() {
        tokio::select! {
            done = &mut from_guest, if guest_side.is_none() => {
                if !done.1 { break; }
                guest_side = Some(done.0);
            }
            done = &mut to_guest, if client_side.is_none() => {
                if !done.1 { break; }
                client_side = Some(done.0);
            }
        }
    }
    info!(
        from_guest = guest_side.unwrap_or_default(),
        to_guest = client_side.unwrap_or_default(),
        "port forward ended"
    );
}
