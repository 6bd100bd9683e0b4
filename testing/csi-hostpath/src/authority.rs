//! Serving gRPC to clients that send a unix socket's *path* as HTTP/2 `:authority`.
//!
//! The kubelet's plugin watcher dials `<driver>-reg.sock` by its bare path, so grpc-go
//! sends that path (`/var/lib/kubelet/plugins_registry/...`) as `:authority`. That is not
//! an authority (RFC 9113 §8.3.1: `host[:port]`), and the HTTP/2 stack under tonic
//! refuses the request with `RST_STREAM(PROTOCOL_ERROR)`. For a unix socket the authority
//! means nothing, so this module puts a small relay in front of the server: each accepted
//! connection is pumped through an in-memory pipe, and in the client→server direction
//! every `:authority` value that is at least as long as [`REPLACEMENT`] is replaced by it
//! inside the HPACK header blocks. Everything else passes byte for byte; the
//! server→client direction is untouched.
//!
//! HPACK state stays consistent without decoding the whole block: a replaced literal
//! enters both dynamic tables as the same entry position, and the server's copy is never
//! larger than the client's (only values of at least `REPLACEMENT`'s length are
//! replaced), so the server never evicts an entry the client may still refer to.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::debug;

/// The `:authority` the server sees instead of a socket path.
pub const REPLACEMENT: &[u8] = b"localhost";
/// HTTP/2's client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes buffered in each direction of a relayed connection.
const PIPE_BYTES: usize = 64 * 1024;
/// The largest frame the relay sends: HTTP/2's initial SETTINGS_MAX_FRAME_SIZE, which
/// tonic's server keeps.
const MAX_FRAME: usize = 16_384;
/// The largest header block the relay accepts from a client.
const MAX_HEADER_BLOCK: usize = 1 << 20;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// `:authority` in HPACK's static table (RFC 7541 Appendix A).
const STATIC_AUTHORITY: u64 = 1;

/// A malformed frame or header block from a client.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or writing failed.
    #[error("relay: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not HTTP/2 as expected.
    #[error("relay: {0}")]
    Protocol(&'static str),
}

/// The server's end of a relayed connection.
#[derive(Debug)]
pub struct RelayedStream(DuplexStream);

impl Connected for RelayedStream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for RelayedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RelayedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections accepted on `listener`, each relayed with its authority fixed: an
/// incoming stream for `serve_with_incoming*`. It ends when accepting fails.
pub fn relayed_incoming(listener: UnixListener) -> ReceiverStream<io::Result<RelayedStream>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(error) => {
                    let _ = tx.send(Err(error)).await;
                    return;
                }
            };
            let (server_end, relay_end) = tokio::io::duplex(PIPE_BYTES);
            if tx.send(Ok(RelayedStream(server_end))).await.is_err() {
                return;
            }
            tokio::spawn(relay(client, relay_end));
        }
    });
    ReceiverStream::new(rx)
}

/// Pumps one connection until either side closes.
async fn relay(client: tokio::net::UnixStream, server: DuplexStream) {
    let (client_read, mut client_write) = client.into_split();
    let (server_read, server_write) = tokio::io::split(server);
    let upstream = fix_authorities(client_read, server_write);
    let downstream = async move {
        let mut server_read = server_read;
        let result = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
        result
    };
    let (up, down) = tokio::join!(upstream, downstream);
    if let Err(error) = up {
        debug!(%error, "relayed connection ended (client side)");
    }
    if let Err(error) = down {
        debug!(%error, "relayed connection ended (server side)");
    }
}

/// Copies a client's HTTP/2 byte stream from `from` to `to`, rewriting header blocks.
pub async fn fix_authorities<R, W>(mut from: R, mut to: W) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    if !read_or_eof(&mut from, &mut preface).await? {
        return Ok(());
    }
    if &preface != PREFACE {
        return Err(RelayError::Protocol("not an HTTP/2 client preface"));
    }
    to.write_all(&preface).await?;
    // A header block in progress: stream, END_STREAM flag, fragments so far.
    let mut pending: Option<(u32, u8, Vec<u8>)> = None;
    loop {
        let mut header = [0u8; 9];
        if !read_or_eof(&mut from, &mut header).await? {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        from.read_exact(&mut payload).await?;
        match (kind, pending.take()) {
            (FRAME_HEADERS, None) => {
                let fragment = headers_fragment(flags, &payload)?;
                pending = Some((stream, flags & FLAG_END_STREAM, fragment.to_vec()));
            }
            (FRAME_CONTINUATION, Some((id, end_stream, mut block))) if id == stream => {
                block.extend_from_slice(&payload);
                if block.len() > MAX_HEADER_BLOCK {
                    return Err(RelayError::Protocol("header block too large"));
                }
                pending = Some((id, end_stream, block));
            }
            (_, Some(_)) => return Err(RelayError::Protocol("frame inside a header block")),
            (_, None) => {
                to.write_all(&header).await?;
                to.write_all(&payload).await?;
                continue;
            }
        }
        // HEADERS or CONTINUATION: complete when this frame ends the block.
        if flags & FLAG_END_HEADERS != 0 {
            if let Some((id, end_stream, block)) = pending.take() {
                let fixed = rewrite_block(&block)?;
                write_header_block(&mut to, id, end_stream, &fixed).await?;
            }
        }
    }
}

/// Reads exactly `buf.len()` bytes; false on a clean end of stream before the first.
async fn read_or_eof<R: AsyncRead + Unpin>(from: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = from.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

/// The header block fragment of a HEADERS payload, without padding and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], RelayError> {
    let mut fragment = payload;
    let mut padding = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = fragment
            .split_first()
            .ok_or(RelayError::Protocol("PADDED HEADERS without a pad length"))?;
        padding = usize::from(pad);
        fragment = rest;
    }
    if flags & FLAG_PRIORITY != 0 {
        fragment = fragment
            .get(5..)
            .ok_or(RelayError::Protocol("PRIORITY HEADERS too short"))?;
    }
    let end = fragment
        .len()
        .checked_sub(padding)
        .ok_or(RelayError::Protocol("padding longer than the frame"))?;
    Ok(&fragment[..end])
}

/// Sends `block` as HEADERS (+ CONTINUATION) frames of at most [`MAX_FRAME`] bytes.
async fn write_header_block<W: AsyncWrite + Unpin>(
    to: &mut W,
    stream: u32,
    end_stream: u8,
    block: &[u8],
) -> io::Result<()> {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut first = true;
    if block.is_empty() {
        return to
            .write_all(&frame_header(
                0,
                FRAME_HEADERS,
                end_stream | FLAG_END_HEADERS,
                stream,
            ))
            .await;
    }
    while let Some(chunk) = chunks.next() {
        let kind = if first {
            FRAME_HEADERS
        } else {
            FRAME_CONTINUATION
        };
        let mut flags = if first { end_stream } else { 0 };
        if chunks.peek().is_none() {
            flags |= FLAG_END_HEADERS;
        }
        to.write_all(&frame_header(chunk.len(), kind, flags, stream))
            .await?;
        to.write_all(chunk).await?;
        first = false;
    }
    Ok(())
}

fn frame_header(length: usize, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let [_, l0, l1, l2] = u32::try_from(length).unwrap_or(0).to_be_bytes();
    let [s0, s1, s2, s3] = stream.to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

/// An HPACK integer with an `prefix`-bit prefix at `block[*at]` (RFC 7541 §5.1).
fn read_integer(block: &[u8], at: &mut usize, prefix: u32) -> Result<u64, RelayError> {
    let truncated = RelayError::Protocol("truncated HPACK integer");
    let max = (1u64 << prefix) - 1;
    let first = *block.get(*at).ok_or(truncated)?;
    *at += 1;
    let mut value = u64::from(first) & max;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let byte = *block
            .get(*at)
            .ok_or(RelayError::Protocol("truncated HPACK integer"))?;
        *at += 1;
        value = value
            .checked_add(u64::from(byte & 0x7f) << shift)
            .ok_or(RelayError::Protocol("HPACK integer overflow"))?;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 56 {
            return Err(RelayError::Protocol("HPACK integer overflow"));
        }
    }
}

/// Skips an HPACK string literal at `block[*at]`; its (huffman flag, bytes).
fn read_string<'a>(block: &'a [u8], at: &mut usize) -> Result<(bool, &'a [u8]), RelayError> {
    let huffman = block
        .get(*at)
        .map(|b| b & 0x80 != 0)
        .ok_or(RelayError::Protocol("truncated HPACK string"))?;
    let length = usize::try_from(read_integer(block, at, 7)?)
        .map_err(|_| RelayError::Protocol("HPACK string too long"))?;
    let bytes = block
        .get(*at..*at + length)
        .ok_or(RelayError::Protocol("truncated HPACK string"))?;
    *at += length;
    Ok((huffman, bytes))
}

/// Whether a string literal surely decodes to at least [`REPLACEMENT`]'s length: plain
/// text by its length; Huffman codes are at most 30 bits per character.
fn at_least_replacement(huffman: bool, bytes: &[u8]) -> bool {
    let shortest = if huffman {
        bytes.len() * 8 / 30
    } else {
        bytes.len()
    };
    shortest >= REPLACEMENT.len()
}

/// The header block with long `:authority` values replaced by [`REPLACEMENT`].
pub fn rewrite_block(block: &[u8]) -> Result<Vec<u8>, RelayError> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    while at < block.len() {
        let start = at;
        let first = block[at];
        let prefix = if first & 0x80 != 0 {
            // Indexed field (§6.1): copied.
            read_integer(block, &mut at, 7)?;
            out.extend_from_slice(&block[start..at]);
            continue;
        } else if first & 0xc0 == 0x40 {
            6 // literal with incremental indexing (§6.2.1)
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update (§6.3): copied.
            read_integer(block, &mut at, 5)?;
            out.extend_from_slice(&block[start..at]);
            continue;
        } else {
            4 // literal without indexing or never indexed (§6.2.2, §6.2.3)
        };
        let name_index = read_integer(block, &mut at, prefix)?;
        let is_authority = if name_index == 0 {
            let (huffman, name) = read_string(block, &mut at)?;
            !huffman && name == b":authority"
        } else {
            name_index == STATIC_AUTHORITY
        };
        let value_start = at;
        let (huffman, value) = read_string(block, &mut at)?;
        out.extend_from_slice(&block[start..value_start]);
        if is_authority && at_least_replacement(huffman, value) {
            out.push(u8::try_from(REPLACEMENT.len()).unwrap_or(0));
            out.extend_from_slice(REPLACEMENT);
        } else {
            out.extend_from_slice(&block[value_start..at]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `:authority: <path>` as a plain literal with incremental indexing, name indexed.
    fn authority_literal(value: &[u8]) -> Vec<u8> {
        let mut block = vec![0x40 | 0x01];
        assert!(value.len() < 127);
        block.push(value.len() as u8);
        block.extend_from_slice(value);
        block
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let path = b"/var/lib/kubelet/plugins_registry/x-reg.sock";
        // :method POST (static 3), :scheme http (6), :path literal, then the authority.
        let mut block = vec![0x83, 0x86, 0x44, 0x05];
        block.extend_from_slice(b"/a/b1");
        block.extend(authority_literal(path));
        block.extend([0xbe]); // a dynamic-table reference, copied
        let fixed = rewrite_block(&block).unwrap();
        let mut expected = vec![0x83, 0x86, 0x44, 0x05];
        expected.extend_from_slice(b"/a/b1");
        expected.extend(authority_literal(b"localhost"));
        expected.push(0xbe);
        assert_eq!(fixed, expected);
    }

    #[test]
    fn short_and_literal_named_authorities() {
        // Shorter than the replacement: kept (it may be a valid host).
        let short = authority_literal(b"x:1");
        assert_eq!(rewrite_block(&short).unwrap(), short);
        // Literal name ":authority", never indexed (0x10), plain value.
        let mut block = vec![0x10, 10];
        block.extend_from_slice(b":authority");
        block.push(20);
        block.extend_from_slice(b"/run/some/thing.sock");
        let fixed = rewrite_block(&block).unwrap();
        let mut expected = vec![0x10, 10];
        expected.extend_from_slice(b":authority");
        expected.push(9);
        expected.extend_from_slice(b"localhost");
        assert_eq!(fixed, expected);
    }

    #[test]
    fn truncated_blocks_are_refused() {
        for bad in [&[0x41u8][..], &[0x41, 0x05, b'a'], &[0xff], &[0x00, 0x85]] {
            assert!(rewrite_block(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn integers_with_continuation_bytes() {
        // 1337 with a 5-bit prefix (RFC 7541 C.1.2).
        let mut at = 0;
        assert_eq!(read_integer(&[0x1f, 0x9a, 0x0a], &mut at, 5).unwrap(), 1337);
        assert_eq!(at, 3);
    }

    #[tokio::test]
    async fn frames_are_relayed_with_the_block_rewritten_and_split_headers_joined() {
        let path = b"/var/lib/kubelet/plugins_registry/x-reg.sock";
        let block = authority_literal(path);
        let (first, rest) = block.split_at(10);
        let mut input = PREFACE.to_vec();
        // SETTINGS (type 4) passes through untouched.
        input.extend(frame_header(0, 0x4, 0, 0));
        // HEADERS, padded (2 bytes) and with priority, then a CONTINUATION.
        let mut headers = vec![2u8, 0, 0, 0, 0, 16];
        headers.extend_from_slice(first);
        headers.extend([0, 0]);
        input.extend(frame_header(
            headers.len(),
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            1,
        ));
        input.extend(&headers);
        input.extend(frame_header(
            rest.len(),
            FRAME_CONTINUATION,
            FLAG_END_HEADERS,
            1,
        ));
        input.extend(rest);
        // DATA (type 0) with END_STREAM passes through.
        input.extend(frame_header(3, 0x0, FLAG_END_STREAM, 1));
        input.extend(b"abc");

        let mut output = Vec::new();
        fix_authorities(&input[..], &mut output).await.unwrap();
        let fixed = authority_literal(b"localhost");
        let mut expected = PREFACE.to_vec();
        expected.extend(frame_header(0, 0x4, 0, 0));
        expected.extend(frame_header(
            fixed.len(),
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
        ));
        expected.extend(&fixed);
        expected.extend(frame_header(3, 0x0, FLAG_END_STREAM, 1));
        expected.extend(b"abc");
        assert_eq!(output, expected);
    }

    #[tokio::test]
    async fn a_client_that_is_not_http2_is_refused() {
        let mut output = Vec::new();
        let error = fix_authorities(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &mut output)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("preface"), "{error}");
        assert!(output.is_empty());
    }
}
