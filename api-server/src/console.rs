//! `GET .../virtualmachineinstances/NAME/console`: the serial console as a WebSocket.
//!
//! kube-apiserver proxies the upgrade; the api-server checks the user, opens the node link
//! to the agent running the instance (so that "not found" and "not running" are still
//! plain HTTP errors), answers `101 Switching Protocols` and relays bytes.
//!
//! Two framings, chosen by the client's `Sec-WebSocket-Protocol`:
//! - `v4.channel.k8s.io` (kubectl-style streams, what kube clients offer): every binary
//!   message starts with a channel byte, 0 for input to the guest, 1 for its output;
//! - `plain.kubevirt.io` (KubeVirt's) or none: binary messages are the bytes themselves.

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, Instrument};

use crate::node_link::LinkStream;
use crate::reply::Reply;

/// The channel-stream subprotocol (channel byte first).
pub const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
/// KubeVirt's console subprotocol (bytes as they are).
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";
const STDIN_CHANNEL: u8 = 0;
const STDOUT_CHANNEL: u8 = 1;

/// How messages are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Channel byte first.
    Channel,
    /// Bytes only.
    Plain,
}

/// The framing for the offered subprotocols (comma-separated), and the one to answer
/// with (None: the client offered none).
pub fn choose(offered: Option<&str>) -> Result<(Framing, Option<&'static str>), Reply> {
    let Some(offered) = offered else {
        return Ok((Framing::Plain, None));
    };
    let protocols: Vec<&str> = offered.split(',').map(str::trim).collect();
    if protocols.contains(&CHANNEL_PROTOCOL) {
        Ok((Framing::Channel, Some(CHANNEL_PROTOCOL)))
    } else if protocols.contains(&PLAIN_PROTOCOL) {
        Ok((Framing::Plain, Some(PLAIN_PROTOCOL)))
    } else {
        Err(Reply::bad_request(format!(
            "none of the WebSocket subprotocols {offered:?} is served; use {CHANNEL_PROTOCOL} or {PLAIN_PROTOCOL}"
        )))
    }
}

/// Checks the upgrade request: returns its key and the framing.
pub fn check_upgrade(
    request: &Request<Incoming>,
) -> Result<(String, Framing, Option<&'static str>), Reply> {
    let headers = request.headers();
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok());
    let (true, Some(key)) = (upgrade, key) else {
        return Err(Reply::bad_request(
            "the console is a WebSocket: send Upgrade: websocket with a Sec-WebSocket-Key",
        ));
    };
    let offered = headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let (framing, protocol) = choose(offered)?;
    Ok((key.to_string(), framing, protocol))
}

/// Answers the upgrade and relays between the WebSocket and `link` once it happened.
/// With `half_close` (port forwarding), an empty message on the input channel ends the
/// input only: the guest's side gets end-of-file and its output still flows until it
/// closes.
pub fn upgrade(
    mut request: Request<Incoming>,
    key: &str,
    framing: Framing,
    protocol: Option<&'static str>,
    link: LinkStream,
    what: String,
    half_close: bool,
) -> Response<Full<Bytes>> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    info!(%what, "console attached");
                    relay(socket, link, framing, half_close).await;
                    info!(%what, "console detached");
                }
                Err(error) => debug!(%error, "the console upgrade did not happen"),
            }
        }
        .in_current_span(),
    );
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    response
}

/// How the client's input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputEnd {
    /// It closed the WebSocket or went away.
    Closed,
    /// It sent end-of-file (half-close).
    Eof,
}

/// Copies both ways until either side ends. With `half_close` (port forwarding) each
/// direction ends on its own, as TCP's do: the client's end-of-file (an empty input
/// message) shuts the guest connection's sending side, the guest's end-of-file is passed on
/// as an empty output message, and the session closes once both ended (or the client went
/// away).
async fn relay<S>(socket: WebSocketStream<S>, link: LinkStream, framing: Framing, half_close: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = socket.split();
    let (mut from_guest, mut to_guest) = tokio::io::split(link);
    let frame = |bytes: &[u8]| match framing {
        Framing::Channel => {
            let mut framed = Vec::with_capacity(bytes.len() + 1);
            framed.push(STDOUT_CHANNEL);
            framed.extend_from_slice(bytes);
            framed
        }
        Framing::Plain => bytes.to_vec(),
    };
    let half_close_output = half_close && framing == Framing::Channel;
    {
        let output = async {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let n = match from_guest.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if to_client
                    .send(Message::binary(frame(&buffer[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if half_close_output {
                let _ = to_client.send(Message::binary(frame(&[]))).await;
            }
        };
        let input = async {
            let mut end = InputEnd::Closed;
            while let Some(Ok(message)) = from_client.next().await {
                let data = match message {
                    Message::Binary(data) => data.to_vec(),
                    Message::Text(text) => text.as_bytes().to_vec(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let payload = match framing {
                    Framing::Channel => match data.split_first() {
                        Some((&STDIN_CHANNEL, rest)) => rest.to_vec(),
                        // Resize and other channels mean nothing to a serial console.
                        _ => continue,
                    },
                    Framing::Plain => data,
                };
                if half_close && payload.is_empty() {
                    end = InputEnd::Eof;
                    break;
                }
                if to_guest.write_all(&payload).await.is_err() || to_guest.flush().await.is_err() {
                    break;
                }
            }
            let _ = to_guest.shutdown().await;
            end
        };
        tokio::pin!(output, input);
        let mut output_ended = false;
        let mut input_ended = None;
        loop {
            tokio::select! {
                () = &mut output, if !output_ended => output_ended = true,
                end = &mut input, if input_ended.is_none() => input_ended = Some(end),
            }
            let done = match input_ended {
                // A console, or a client that went away: either side ending ends it.
                _ if !half_close => true,
                Some(InputEnd::Closed) => true,
                Some(InputEnd::Eof) => output_ended,
                None => output_ended && !half_close_output,
            };
            if done {
                break;
            }
        }
    }
    let _ = to_client.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_protocol_is_preferred_and_unknown_ones_refused() {
        assert_eq!(
            choose(Some("v5.channel.k8s.io, v4.channel.k8s.io")).unwrap(),
            (Framing::Channel, Some(CHANNEL_PROTOCOL))
        );
        assert_eq!(
            choose(Some("plain.kubevirt.io")).unwrap(),
            (Framing::Plain, Some(PLAIN_PROTOCOL))
        );
        assert_eq!(choose(None).unwrap(), (Framing::Plain, None));
        assert_eq!(
            choose(Some("mqtt")).unwrap_err().code,
            StatusCode::BAD_REQUEST
        );
    }
}
