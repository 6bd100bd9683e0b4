//! A tonic [`Channel`] to a gRPC server listening on a unix socket.
//!
//! HTTP/2 needs a URI, so the endpoint gets a placeholder one; the connector ignores it
//! and dials the socket instead. When the connection drops, the channel redials the same
//! socket.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection was not established within the deadline.
    #[error("timed out after {timeout:?} connecting to {path}", path = path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The deadline that expired.
        timeout: Duration,
    },
    /// Dialing the socket or the HTTP/2 handshake failed; the `io::Error` behind it, if
    /// any, is in the cause chain (see [`crate::cause`]).
    #[error("cannot connect to {path}", path = path.display())]
    Transport {
        /// The socket path.
        path: PathBuf,
        /// What tonic reported.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the gRPC server listening on the unix socket `socket`, giving up after
/// `timeout`.
///
/// `placeholder_uri` (for example `"http://launcher.invalid"`) is what the HTTP/2 layer
/// sees as the server's address; it is never resolved.
pub async fn connect(
    socket: &Path,
    placeholder_uri: &'static str,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    let endpoint = Endpoint::from_static(placeholder_uri).connect_timeout(timeout);
    let dial = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(dial).await?)) }
    });
    tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| ConnectError::Timeout {
            path: socket.to_path_buf(),
            timeout,
        })?
        .map_err(|source| ConnectError::Transport {
            path: socket.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::first_io_error;

    const URI: &str = "http://grpc-uds-test.invalid";

    fn io_kind(error: &ConnectError) -> Option<io::ErrorKind> {
        match error {
            ConnectError::Transport { source, .. } => first_io_error(source).map(io::Error::kind),
            ConnectError::Timeout { .. } => None,
        }
    }

    #[tokio::test]
    async fn missing_socket_is_a_transport_error_with_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.sock");
        let e = connect(&path, URI, Duration::from_secs(2))
            .await
            .expect_err("nothing to connect to");
        assert_eq!(io_kind(&e), Some(io::ErrorKind::NotFound), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()));
    }

    #[tokio::test]
    async fn stale_socket_is_a_transport_error_with_connection_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let e = connect(&path, URI, Duration::from_secs(2))
            .await
            .expect_err("nobody listens");
        assert_eq!(io_kind(&e), Some(io::ErrorKind::ConnectionRefused), "{e:?}");
    }
}
