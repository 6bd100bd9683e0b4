//! Port forwarding through the cluster: one WebSocket of the instance's
//! `portforward/PORT` subresource per connection, through kube-apiserver, Ironvisor's
//! api-server and the node agent. Channel framing as the console: 0 to the guest, 1 from
//! it, 3 errors; an empty message on 0 or 1 is that direction's end-of-file.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::cluster::ConsoleSocket;

const TO_GUEST_CHANNEL: u8 = 0;
const FROM_GUEST_CHANNEL: u8 = 1;
const ERROR_CHANNEL: u8 = 3;

/// Copies `input` to the guest and the guest to `output` until the server closes the
/// session; an error the server sends on the error channel is returned.
pub async fn relay<R, W>(socket: ConsoleSocket, mut input: R, output: W) -> Result<(), String>
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
        let mut output = Some(output);
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
                Some((&FROM_GUEST_CHANNEL, [])) => end_output(&mut output).await,
                Some((&FROM_GUEST_CHANNEL, rest)) => {
                    let Some(out) = output.as_mut() else { continue };
                    if out.write_all(rest).await.is_err() || out.flush().await.is_err() {
                        break;
                    }
                }
                Some((&ERROR_CHANNEL, rest)) if !rest.is_empty() => {
                    return Err(String::from_utf8_lossy(rest).into_owned())
                }
                _ => continue,
            }
        }
        end_output(&mut output).await;
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

/// Ends the local side's receiving half: shut down and dropped, so a socket's peer or a
/// pipe's reader sees end-of-file.
pub(crate) async fn end_output<W: AsyncWrite + Unpin>(output: &mut Option<W>) {
    if let Some(mut out) = output.take() {
        let _ = out.shutdown().await;
    }
}
