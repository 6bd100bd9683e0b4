//! Console clients over a unix socket (what `virtctl console` attaches to).

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::hub::{ConsoleHub, Overflow};

/// Permissions of the console socket: only the launcher's user may attach.
const SOCKET_MODE: u32 = 0o600;

/// Pause after a failed `accept` (for example EMFILE) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why the console socket could not be served. Every variant names the socket path.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The directory that should hold the socket does not exist.
    #[error("console socket {path}: directory {dir} does not exist")]
    SocketDirMissing {
        /// The socket path asked for.
        path: PathBuf,
        /// Its parent directory, which is missing.
        dir: PathBuf,
    },
    /// Something other than a socket is in the way.
    #[error("console socket {path}: path exists and is not a socket; refusing to remove it")]
    NotASocket {
        /// The socket path asked for.
        path: PathBuf,
    },
    /// A live process is already serving this socket.
    #[error("console socket {path}: another process is already listening on it")]
    SocketInUse {
        /// The socket path asked for.
        path: PathBuf,
    },
    /// The path (an existing file, or the socket just bound) could not be inspected.
    #[error("console socket {path}: cannot inspect path: {source}")]
    Inspect {
        /// The socket path asked for.
        path: PathBuf,
        /// The `lstat` error.
        source: io::Error,
    },
    /// A stale socket file could not be removed.
    #[error("console socket {path}: cannot remove stale socket: {source}")]
    RemoveStale {
        /// The socket path asked for.
        path: PathBuf,
        /// The `unlink` error.
        source: io::Error,
    },
    /// `bind` failed.
    #[error("console socket {path}: cannot bind: {source}")]
    Bind {
        /// The socket path asked for.
        path: PathBuf,
        /// The `bind` error.
        source: io::Error,
    },
    /// The socket's permissions could not be restricted.
    #[error("console socket {path}: cannot set mode {mode:o}: {source}")]
    Permissions {
        /// The socket path asked for.
        path: PathBuf,
        /// The mode that could not be set.
        mode: u32,
        /// The `chmod` error.
        source: io::Error,
    },
}

impl ConsoleHub {
    /// Serves console clients on a unix socket at `path` until `shutdown` completes.
    ///
    /// The socket is created with mode 0600; a stale socket left by a dead process is
    /// replaced, but a live one (something accepts connections) or a non-socket file is
    /// an error. Any number of clients may attach and detach at any time: each first
    /// receives the ring (the boot log so far), then live output, and everything it sends
    /// goes to the [`crate::ConsoleInput`]. A client detaches by closing the connection
    /// (or shutting down its sending half); one that falls more than the client queue
    /// bound behind is disconnected.
    ///
    /// When `shutdown` completes all clients are disconnected and the socket file is
    /// removed before this returns. Must run inside a tokio runtime.
    pub async fn serve_unix(&self, path: &Path, shutdown: impl Future) -> Result<(), ConsoleError> {
        let listener = ConsoleListener::bind(path)?;
        self.serve_listener(listener, shutdown).await;
        Ok(())
    }

    /// Serves console clients on an already bound [`ConsoleListener`] until `shutdown`
    /// completes, then disconnects them and removes the socket file (see
    /// [`ConsoleHub::serve_unix`]).
    pub async fn serve_listener(&self, listener: ConsoleListener, shutdown: impl Future) {
        let span = info_span!("console_socket", path = %listener.path().display());
        self.serve_listener_inner(listener, shutdown)
            .instrument(span)
            .await;
    }

    async fn serve_listener_inner(&self, bound: ConsoleListener, shutdown: impl Future) {
        let ConsoleListener { listener, file } = bound;
        info!("console socket listening");

        let mut clients = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _addr)) => {
                        let (reader, writer) = stream.into_split();
                        let task = self.client_task(Overflow::Disconnect, Some(reader), writer);
                        clients.spawn(task.in_current_span());
                    }
                    Err(err) => {
                        warn!(error = %err, "console socket: accept failed; retrying");
                        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    }
                },
                Some(_ended) = clients.join_next(), if !clients.is_empty() => {}
            }
        }

        info!(clients = clients.len(), "console socket shutting down");
        drop(listener);
        drop(file);
        clients.shutdown().await;
    }
}

/// A bound console socket, not served yet. Clients can already connect (they wait in the
/// backlog). Dropping it removes the socket file, unless another process replaced it.
#[derive(Debug)]
pub struct ConsoleListener {
    listener: UnixListener,
    file: SocketFile,
}

impl ConsoleListener {
    /// Binds the console socket at `path` (mode 0600), replacing a stale socket nobody
    /// listens on; a live socket or a file that is not a socket is an error. Must run
    /// inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, ConsoleError> {
        let _span = info_span!("console_bind", path = %path.display()).entered();
        bind_socket(path)
    }

    /// The socket path clients connect to.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Device and inode of the socket file this listener created.
    pub fn file_id(&self) -> (u64, u64) {
        (self.file.dev, self.file.ino)
    }
}

/// What is at a socket path before a new socket is bound there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Nothing: the path is free.
    Absent,
    /// A socket file nobody listens on (`connect` is refused): safe to remove.
    Stale,
    /// A socket some process listens on (`connect` succeeds or its backlog is full).
    Live,
    /// A file that is not a socket.
    NotASocket,
}

/// Looks at `path` without changing it: is it free, a stale socket, a live one, or
/// something else? Probes a socket with a non-blocking `connect`, so a listener with a
/// full backlog counts as live instead of blocking the caller. Errors other than
/// "refused" (for example no permission) are returned as they are: the socket's state is
/// unknown then, and it must not be removed.
pub fn probe_path(path: &Path) -> io::Result<PathState> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(PathState::Absent),
        Err(err) => return Err(err),
    };
    if !metadata.file_type().is_socket() {
        return Ok(PathState::NotASocket);
    }
    let probe = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    match connect(probe.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Ok(PathState::Live),
        Err(Errno::ECONNREFUSED) => Ok(PathState::Stale),
        // Removed between the lstat and the connect.
        Err(Errno::ENOENT) => Ok(PathState::Absent),
        Err(errno) => Err(errno.into()),
    }
}

/// Binds the listening socket at `path`, replacing a stale socket, with mode 0600.
fn bind_socket(path: &Path) -> Result<ConsoleListener, ConsoleError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(ConsoleError::SocketDirMissing {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(|source| ConsoleError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SocketFile::new(path).map_err(|source| {
        let _ = std::fs::remove_file(path);
        ConsoleError::Inspect {
            path: path.to_path_buf(),
            source,
        }
    })?;
    // The directory's permissions are the real gate; this narrows the file too. On
    // failure `file` is dropped and removes the socket: none is left with default
    // permissions.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |source| ConsoleError::Permissions {
            path: path.to_path_buf(),
            mode: SOCKET_MODE,
            source,
        },
    )?;
    Ok(ConsoleListener { listener, file })
}

/// Removes a socket file nobody listens on; refuses to touch anything else.
fn remove_stale_socket(path: &Path) -> Result<(), ConsoleError> {
    let state = probe_path(path).map_err(|source| ConsoleError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    match state {
        PathState::Absent => Ok(()),
        PathState::NotASocket => Err(ConsoleError::NotASocket {
            path: path.to_path_buf(),
        }),
        PathState::Live => Err(ConsoleError::SocketInUse {
            path: path.to_path_buf(),
        }),
        PathState::Stale => {
            info!(path = %path.display(), "removing stale console socket");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ConsoleError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
    }
}

/// The socket file a listener created. Removed on drop, however serving ends, but only
/// while it is still the same file (device and inode): a newer socket another process
/// bound at the same path is left alone.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<Self> {
        let metadata = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    // A launcher that dropped root (--run-as): its socket guardian removes it.
                    Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
                        debug!(path = %self.path.display(), "console socket left to the socket guardian");
                    }
                    Err(err) => {
                        warn!(path = %self.path.display(), error = %err, "cannot remove console socket");
                    }
                }
            }
            Ok(_) => warn!(
                path = %self.path.display(),
                "console socket was replaced by another file; leaving it"
            ),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(path = %self.path.display(), error = %err, "cannot inspect console socket")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::ConsoleInput;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[derive(Default)]
    struct Collect(Mutex<Vec<u8>>);

    impl ConsoleInput for Collect {
        fn send(&self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    struct Server {
        hub: ConsoleHub,
        path: PathBuf,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<(), ConsoleError>>,
        _dir: tempfile::TempDir,
    }

    impl Server {
        async fn start(hub: ConsoleHub) -> Server {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("console.sock");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = {
                let hub = hub.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    hub.serve_unix(&path, async {
                        let _ = stopped.await;
                    })
                    .await
                })
            };
            wait_until(|| path.exists()).await;
            Server {
                hub,
                path,
                stop: Some(stop),
                task,
                _dir: dir,
            }
        }

        async fn connect(&self) -> UnixStream {
            let before = self.hub.client_count();
            let stream = UnixStream::connect(&self.path).await.unwrap();
            wait_until(|| self.hub.client_count() > before).await;
            stream
        }

        async fn stop(mut self) -> PathBuf {
            self.stop.take().unwrap().send(()).unwrap();
            tokio::time::timeout(TIMEOUT, &mut self.task)
                .await
                .expect("serve_unix did not stop")
                .unwrap()
                .unwrap();
            self.path.clone()
        }
    }

    async fn wait_until(mut cond: impl FnMut() -> bool) {
        tokio::time::timeout(TIMEOUT, async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("condition not reached in time");
    }

    async fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut buf))
            .await
            .expect("timed out reading console output")
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn socket_is_private_and_removed_after_shutdown() {
        let server = Server::start(ConsoleHub::new(1024)).await;
        let mode = std::fs::metadata(&server.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut client = server.connect().await;
        let path = server.stop().await;
        assert!(!path.exists(), "socket file left behind");
        // The client was disconnected: it reads EOF.
        let mut buf = Vec::new();
        let n = tokio::time::timeout(TIMEOUT, client.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn late_attacher_sees_earlier_output_then_live_output() {
        let hub = ConsoleHub::new(1024);
        let boot = b"[    0.000000] Linux version 6.1\n";
        hub.output().write_all(boot).unwrap();
        let server = Server::start(hub.clone()).await;
        let mut client = server.connect().await;
        assert_eq!(read_n(&mut client, boot.len()).await, boot);
        hub.output().write_all(b"login: ").unwrap();
        assert_eq!(read_n(&mut client, 7).await, b"login: ");
        server.stop().await;
    }

    #[tokio::test]
    async fn two_clients_see_the_same_live_stream() {
        let hub = ConsoleHub::new(16);
        let server = Server::start(hub.clone()).await;
        let mut a = server.connect().await;
        let mut b = server.connect().await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = hub.output();
        for chunk in data.chunks(97) {
            out.write_all(chunk).unwrap();
        }
        let (got_a, got_b) = tokio::join!(read_n(&mut a, data.len()), read_n(&mut b, data.len()));
        assert_eq!(got_a, data);
        assert_eq!(got_b, data);
        server.stop().await;
    }

    #[tokio::test]
    async fn input_from_clients_reaches_the_console_input() {
        let hub = ConsoleHub::new(0);
        let sink = Arc::new(Collect::default());
        hub.set_input(sink.clone());
        let server = Server::start(hub.clone()).await;
        let mut a = server.connect().await;
        let mut b = server.connect().await;
        a.write_all(b"root\r").await.unwrap();
        wait_until(|| sink.0.lock().unwrap().len() == 5).await;
        b.write_all(b"uname -a\r").await.unwrap();
        wait_until(|| sink.0.lock().unwrap().len() == 14).await;
        assert_eq!(*sink.0.lock().unwrap(), b"root\runame -a\r");
        server.stop().await;
    }

    #[tokio::test]
    async fn detach_and_reattach() {
        let hub = ConsoleHub::new(1024);
        let server = Server::start(hub.clone()).await;
        let mut first = server.connect().await;
        hub.output().write_all(b"one ").unwrap();
        assert_eq!(read_n(&mut first, 4).await, b"one ");
        drop(first);
        wait_until(|| hub.client_count() == 0).await;

        hub.output().write_all(b"two ").unwrap();
        let mut second = server.connect().await;
        assert_eq!(read_n(&mut second, 8).await, b"one two ");
        hub.output().write_all(b"three").unwrap();
        assert_eq!(read_n(&mut second, 5).await, b"three");
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stuck_client_never_blocks_the_writer() {
        let hub = ConsoleHub::new(64 * 1024);
        let server = Server::start(hub.clone()).await;
        // Attached, never reads.
        let _stuck = server.connect().await;
        let mut out = hub.output();
        let total = 10 * 1024 * 1024;
        let writer = tokio::task::spawn_blocking(move || {
            let block = [b'x'; 4096];
            let mut written = 0;
            while written < total {
                out.write_all(&block).unwrap();
                written += block.len();
            }
            // The UART writes one byte at a time: exercise that path too.
            for _ in 0..100_000 {
                out.write_all(b"y").unwrap();
            }
        });
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("console writes blocked on a stuck client")
            .unwrap();
        assert_eq!(hub.total_output_bytes(), total as u64 + 100_000);
        // The stuck client overflowed its queue and was dropped.
        wait_until(|| hub.client_count() == 0).await;
        assert_eq!(hub.snapshot().len(), 64 * 1024);
        server.stop().await;
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        // A socket file whose listener is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = bind_socket(&path).unwrap();
        drop(listener);
    }

    #[tokio::test]
    async fn live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, ConsoleError::SocketInUse { .. }), "{err}");
    }

    #[tokio::test]
    async fn regular_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        std::fs::write(&path, b"data").unwrap();
        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, ConsoleError::NotASocket { .. }), "{err}");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("console.sock");
        let hub = ConsoleHub::new(0);
        let err = hub
            .serve_unix(&path, std::future::pending::<()>())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConsoleError::SocketDirMissing { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("no-such-dir") && text.contains("does not exist"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn probe_tells_the_states_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe.sock");
        assert_eq!(probe_path(&path).unwrap(), PathState::Absent);
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(probe_path(&path).unwrap(), PathState::Live);
        drop(live);
        assert_eq!(probe_path(&path).unwrap(), PathState::Stale);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert_eq!(probe_path(&path).unwrap(), PathState::NotASocket);
    }

    #[tokio::test]
    async fn listener_with_full_backlog_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Fill the backlog: nobody accepts. Non-blocking connects until refused.
        let mut queued = Vec::new();
        for _ in 0..4096 {
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK,
                None,
            )
            .unwrap();
            let addr = UnixAddr::new(&path).unwrap();
            if connect(fd.as_raw_fd(), &addr).is_err() {
                break;
            }
            queued.push(fd);
        }
        assert_eq!(probe_path(&path).unwrap(), PathState::Live);
        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, ConsoleError::SocketInUse { .. }), "{err}");
    }

    #[tokio::test]
    async fn replaced_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let ours = bind_socket(&path).unwrap();
        assert_eq!(ours.path(), path.as_path());
        // Another process removed ours and bound its own at the same path.
        std::fs::remove_file(&path).unwrap();
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let their_ino = std::fs::symlink_metadata(&path).unwrap().ino();
        assert_ne!(ours.file_id().1, their_ino);
        drop(ours);
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), their_ino);
        drop(theirs);
    }

    #[tokio::test]
    async fn live_socket_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("named.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = ConsoleListener::bind(&path).unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
