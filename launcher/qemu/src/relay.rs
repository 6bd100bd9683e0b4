//! The frame relay between a VM's tap and QEMU: one thread per NIC copies Ethernet
//! frames between the tap descriptor the launcher holds and a unix datagram socket that
//! QEMU's `-netdev dgram` backend sends to and receives from (one frame per datagram).
//!
//! # Why always relay
//!
//! In node mode the tap lives in the VM's network namespace, which the launcher joined,
//! while libvirtd and the QEMU it spawns stay in the host namespace: libvirt's
//! `<interface type='ethernet'>` looks the tap up by name there and fails. A unix
//! socket is a file-system object and crosses network namespaces, so the launcher opens
//! the tap in its own namespace and relays. The relay is used for **every** NIC, not only
//! when the tap is invisible to libvirtd: telling which namespace libvirtd (possibly
//! remote, behind a URI) opens devices in is guesswork, one data path is simpler to test
//! and reason about, the launcher owns the tap in all cases (so a created tap goes away
//! with the launcher, even on SIGKILL), and the cost — one copy per frame without
//! offloads — is noise next to TCG emulation.
//!
//! # Mechanics
//!
//! The launcher binds its socket ([`RelaySocket::bind`]) before the domain exists; QEMU
//! binds its own path at start-up and sends to the launcher's. Once the (paused) domain
//! exists, [`RelaySocket::start`] connects to QEMU's path — a connected datagram socket
//! only accepts datagrams from its peer — and starts the thread. The thread polls the
//! tap, the socket and a stop channel; frames toward QEMU wait (back-pressure onto the
//! tap's queue) while QEMU's receive queue is full, frames toward the guest that the tap
//! cannot take are dropped, as a NIC would. A NIC with a rate limit has it applied to each
//! direction separately (the same token buckets as the KVM launcher's virtio-net): a frame
//! over the limit is held, and nothing more is read from its side, until the bucket
//! allows it. [`NicRelay::stop`] ends the thread and
//! removes both socket files. Both sockets live in the launcher's private runtime
//! directory (QEMU runs as root, see `setup-libvirt.sh`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ironvisor_virtio::{RateLimit, RateLimiter};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Largest frame relayed: a 65535-byte payload with an Ethernet header and a VLAN tag.
pub const MAX_FRAME_BYTES: usize = 65_535 + 14 + 4;
/// How long [`RelaySocket::start`] waits for QEMU's socket to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames moved per direction before polling again (fairness between directions).
const BATCH: usize = 64;
/// Shortest wait for a throttled frame, so a nearly full bucket does not spin.
const MIN_THROTTLE_WAIT: Duration = Duration::from_millis(1);

/// Why a NIC relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The launcher's socket could not be bound.
    #[error("nic {nic}: binding the relay socket {path}: {source}")]
    Bind {
        /// NIC id.
        nic: String,
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// QEMU's socket did not accept the connection in time.
    #[error("nic {nic}: connecting to QEMU's network socket {path}: {source}")]
    Connect {
        /// NIC id.
        nic: String,
        /// QEMU's socket path.
        path: PathBuf,
        /// The last connection error.
        #[source]
        source: io::Error,
    },
    /// A descriptor could not be prepared (non-blocking mode, stop channel, tap dup).
    #[error("nic {nic}: preparing the relay ({what}): {source}")]
    Setup {
        /// NIC id.
        nic: String,
        /// What failed.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The relay thread could not be started.
    #[error("nic {nic}: spawning the relay thread: {source}")]
    Spawn {
        /// NIC id.
        nic: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The launcher's end of a NIC's socket, bound but not connected yet.
#[derive(Debug)]
pub struct RelaySocket {
    nic: String,
    tap: String,
    path: PathBuf,
    /// `None` once [`RelaySocket::start`] handed it to the relay thread.
    socket: Option<UnixDatagram>,
}

impl RelaySocket {
    /// Binds the launcher's socket at `path` (replacing a leftover socket file).
    pub fn bind(nic: &str, tap: &str, path: &Path) -> Result<Self, RelayError> {
        remove_socket_file(path);
        let socket = UnixDatagram::bind(path).map_err(|source| RelayError::Bind {
            nic: nic.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            nic: nic.to_string(),
            tap: tap.to_string(),
            path: path.to_path_buf(),
            socket: Some(socket),
        })
    }

    /// The bound path (QEMU's `remote.path`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connects to QEMU's socket at `qemu_path` and starts relaying frames to and from
    /// `tap` (an open descriptor of the NIC's tap), each direction within `limit`.
    pub fn start(
        mut self,
        tap: File,
        qemu_path: &Path,
        limit: RateLimit,
    ) -> Result<NicRelay, RelayError> {
        let nic = self.nic.clone();
        let setup = |what| {
            let nic = nic.clone();
            move |source| RelayError::Setup { nic, what, source }
        };
        let socket = self.socket.take().ok_or_else(|| {
            setup("socket")(io::Error::other("the relay socket was already started"))
        })?;
        // From here this value no longer owns the socket file; the relay (or, on error,
        // the runtime directory's removal) does.
        let path = self.path.clone();
        let result = Self::spawn(&nic, &self.tap, socket, tap, qemu_path, limit);
        match result {
            Ok((stop, thread)) => {
                tracing::debug!(nic = %nic, qemu = %qemu_path.display(), "frame relay started");
                Ok(NicRelay {
                    nic,
                    stop,
                    thread: Some(thread),
                    files: vec![path, qemu_path.to_path_buf()],
                })
            }
            Err(err) => {
                remove_socket_file(&path);
                Err(err)
            }
        }
    }

    fn spawn(
        nic: &str,
        tap_name: &str,
        socket: UnixDatagram,
        tap: File,
        qemu_path: &Path,
        limit: RateLimit,
    ) -> Result<(UnixDatagram, JoinHandle<RelayStats>), RelayError> {
        let setup = |what| {
            let nic = nic.to_string();
            move |source| RelayError::Setup { nic, what, source }
        };
        connect_with_retry(&socket, qemu_path).map_err(|source| RelayError::Connect {
            nic: nic.to_string(),
            path: qemu_path.to_path_buf(),
            source,
        })?;
        socket
            .set_nonblocking(true)
            .map_err(setup("non-blocking socket"))?;
        set_nonblocking(&tap).map_err(setup("non-blocking tap"))?;
        let (stop_tx, stop_rx) = UnixDatagram::pair().map_err(setup("stop channel"))?;
        let now = Instant::now();
        let pump = Pump {
            tap,
            socket,
            stop: stop_rx,
            stats: RelayStats::default(),
            to_guest_limit: RateLimiter::new(limit, now),
            from_guest_limit: RateLimiter::new(limit, now),
        };
        let span = tracing::info_span!("nic_relay", nic = %nic, tap = %tap_name);
        let thread = std::thread::Builder::new()
            .name(format!("relay-{nic}"))
            .spawn(move || span.in_scope(|| pump.run()))
            .map_err(|source| RelayError::Spawn {
                nic: nic.to_string(),
                source,
            })?;
        Ok((stop_tx, thread))
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        // A relay that never started still owns its socket file.
        if self.socket.is_some() {
            remove_socket_file(&self.path);
        }
    }
}

/// Frame and drop counters of one relay, logged when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Frames read from the tap and sent to QEMU (toward the guest).
    pub to_guest: u64,
    /// Frames received from QEMU and written to the tap (from the guest).
    pub from_guest: u64,
    /// Frames dropped: QEMU not listening, tap full, or oversized.
    pub dropped: u64,
}

/// A running relay; [`NicRelay::stop`] (or drop) ends it and removes its socket files.
#[derive(Debug)]
pub struct NicRelay {
    nic: String,
    stop: UnixDatagram,
    thread: Option<JoinHandle<RelayStats>>,
    files: Vec<PathBuf>,
}

impl NicRelay {
    /// Stops the thread, waits for it and removes both socket files. Idempotent.
    pub fn stop(&mut self) -> Option<RelayStats> {
        let thread = self.thread.take()?;
        if let Err(err) = self.stop.send(b"x") {
            tracing::warn!(nic = %self.nic, %err, "signalling the relay thread to stop");
        }
        let stats = match thread.join() {
            Ok(stats) => Some(stats),
            Err(_) => {
                tracing::error!(nic = %self.nic, "relay thread panicked");
                None
            }
        };
        for file in self.files.drain(..) {
            remove_socket_file(&file);
        }
        if let Some(s) = stats {
            tracing::info!(
                nic = %self.nic,
                to_guest = s.to_guest,
                from_guest = s.from_guest,
                dropped = s.dropped,
                "frame relay stopped"
            );
        }
        stats
    }
}

impl Drop for NicRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's state: the two ends, the stop channel, the counters and each direction's
/// rate limit (`None`: unlimited).
struct Pump {
    tap: File,
    socket: UnixDatagram,
    stop: UnixDatagram,
    stats: RelayStats,
    to_guest_limit: Option<RateLimiter>,
    from_guest_limit: Option<RateLimiter>,
}

/// What one poll reported.
#[derive(Debug, Default)]
struct Ready {
    stop: bool,
    tap_broken: bool,
    tap_in: bool,
    sock_in: bool,
    sock_out: bool,
    sock_err: bool,
}

/// What a poll round asks the thread to do next.
enum Step {
    Continue,
    Stop,
}

/// A frame toward the guest that was read from the tap and not sent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToGuest {
    /// Over the rate limit until `until`.
    Throttled { len: usize, until: Instant },
    /// Admitted; QEMU's queue is full (sent on POLLOUT).
    Blocked { len: usize },
}

/// A frame from the guest over the rate limit until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Throttled {
    len: usize,
    until: Instant,
}

/// The frames a round works on: the buffer of each direction and the frame it holds.
struct Frames {
    to_qemu: Vec<u8>,
    to_tap: Vec<u8>,
    to_guest: Option<ToGuest>,
    from_guest: Option<Throttled>,
}

/// Takes a frame of `len` bytes from `limit` at `now`, or says until when it must wait.
fn admit(limit: &mut Option<RateLimiter>, len: usize, now: Instant) -> Result<(), Instant> {
    match limit {
        None => Ok(()),
        Some(limiter) => limiter
            .admit(len as u64, now)
            .map_err(|wait| now + wait.max(MIN_THROTTLE_WAIT)),
    }
}

impl Pump {
    fn run(mut self) -> RelayStats {
        let mut frames = Frames {
            to_qemu: vec![0u8; MAX_FRAME_BYTES],
            // One byte more than a frame, to notice (and drop) oversized datagrams.
            to_tap: vec![0u8; MAX_FRAME_BYTES + 1],
            to_guest: None,
            from_guest: None,
        };
        loop {
            match self.round(&mut frames) {
                Ok(Step::Continue) => {}
                Ok(Step::Stop) => break,
                Err(err) => {
                    tracing::error!(%err, "frame relay failed; the NIC is disconnected");
                    break;
                }
            }
        }
        self.stats
    }

    fn round(&mut self, frames: &mut Frames) -> io::Result<Step> {
        // A side whose frame is held is not read; a blocked frame waits for POLLOUT; a
        // throttled one for its time.
        let tap_events = match frames.to_guest {
            None => PollFlags::POLLIN,
            Some(_) => PollFlags::empty(),
        };
        let mut sock_events = PollFlags::empty();
        if frames.from_guest.is_none() {
            sock_events |= PollFlags::POLLIN;
        }
        if matches!(frames.to_guest, Some(ToGuest::Blocked { .. })) {
            sock_events |= PollFlags::POLLOUT;
        }
        let to_guest_until = match frames.to_guest {
            Some(ToGuest::Throttled { until, .. }) => Some(until),
            _ => None,
        };
        let deadline = [to_guest_until, frames.from_guest.map(|held| held.until)]
            .into_iter()
            .flatten()
            .min();
        let ready = self.wait(tap_events, sock_events, deadline)?;
        if ready.stop {
            return Ok(Step::Stop);
        }
        if ready.tap_broken {
            return Err(io::Error::other("the tap reported an error or hang-up"));
        }
        let now = Instant::now();
        self.serve_to_guest(frames, &ready, now)?;
        self.serve_from_guest(frames, &ready, now)?;
        if !matches!(frames.to_guest, Some(ToGuest::Blocked { .. })) && ready.sock_err {
            // Report (and so clear) a pending socket error; polling again would spin.
            if let Some(err) = self.socket.take_error()? {
                self.drop_frame("socket error", &err);
            }
        }
        Ok(Step::Continue)
    }

    /// Toward the guest: a throttled frame whose time came is admitted (or waits again),
    /// an admitted one goes to QEMU when it has room, then new frames from the tap.
    fn serve_to_guest(
        &mut self,
        frames: &mut Frames,
        ready: &Ready,
        now: Instant,
    ) -> io::Result<()> {
        let mut admitted_now = false;
        if let Some(ToGuest::Throttled { len, until }) = frames.to_guest {
            if until <= now {
                frames.to_guest = Some(match admit(&mut self.to_guest_limit, len, now) {
                    Ok(()) => {
                        admitted_now = true;
                        ToGuest::Blocked { len }
                    }
                    Err(until) => ToGuest::Throttled { len, until },
                });
            }
        }
        if let Some(ToGuest::Blocked { len }) = frames.to_guest {
            if (ready.sock_out || admitted_now) && self.send_to_qemu(&frames.to_qemu[..len])? {
                frames.to_guest = None;
            }
        }
        if ready.tap_in && frames.to_guest.is_none() {
            frames.to_guest = self.tap_to_qemu(&mut frames.to_qemu)?;
        }
        Ok(())
    }

    /// From the guest: a throttled frame whose time came goes to the tap (or waits again),
    /// then new frames from QEMU.
    fn serve_from_guest(
        &mut self,
        frames: &mut Frames,
        ready: &Ready,
        now: Instant,
    ) -> io::Result<()> {
        if let Some(Throttled { len, until }) = frames.from_guest {
            if until <= now {
                match admit(&mut self.from_guest_limit, len, now) {
                    Ok(()) => {
                        frames.from_guest = None;
                        self.write_to_tap(&frames.to_tap[..len])?;
                    }
                    Err(until) => frames.from_guest = Some(Throttled { len, until }),
                }
            }
        }
        if ready.sock_in && frames.from_guest.is_none() {
            frames.from_guest = self.qemu_to_tap(&mut frames.to_tap)?;
        }
        Ok(())
    }

    /// Polls the stop channel, the tap and the socket for the given events, until
    /// `deadline` at the latest.
    fn wait(
        &self,
        tap_events: PollFlags,
        sock_events: PollFlags,
        deadline: Option<Instant>,
    ) -> io::Result<Ready> {
        let mut fds = [
            PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.tap.as_fd(), tap_events),
            PollFd::new(self.socket.as_fd(), sock_events),
        ];
        let timeout = deadline.map_or(PollTimeout::NONE, |deadline| {
            let millis = deadline
                .saturating_duration_since(Instant::now())
                .as_nanos()
                .div_ceil(1_000_000);
            PollTimeout::from(u16::try_from(millis).unwrap_or(u16::MAX))
        });
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Ready::default()),
            Err(err) => return Err(err.into()),
        }
        let has = |fd: &PollFd, flags: PollFlags| fd.revents().is_some_and(|r| r.intersects(flags));
        let broken = PollFlags::POLLERR | PollFlags::POLLNVAL;
        Ok(Ready {
            stop: has(&fds[0], PollFlags::POLLIN | PollFlags::POLLHUP | broken),
            tap_broken: has(&fds[1], PollFlags::POLLHUP | broken),
            tap_in: has(&fds[1], PollFlags::POLLIN),
            sock_in: has(&fds[2], PollFlags::POLLIN),
            sock_out: has(&fds[2], PollFlags::POLLOUT | PollFlags::POLLERR),
            sock_err: has(&fds[2], PollFlags::POLLERR),
        })
    }

    /// Moves up to [`BATCH`] frames from the tap to QEMU; returns a frame that has to wait
    /// for the rate limit or for room in QEMU's queue.
    fn tap_to_qemu(&mut self, buf: &mut [u8]) -> io::Result<Option<ToGuest>> {
        for _ in 0..BATCH {
            let len = match self.tap.read(buf) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if len == 0 {
                continue;
            }
            if let Err(until) = admit(&mut self.to_guest_limit, len, Instant::now()) {
                return Ok(Some(ToGuest::Throttled { len, until }));
            }
            if !self.send_to_qemu(&buf[..len])? {
                return Ok(Some(ToGuest::Blocked { len }));
            }
        }
        Ok(None)
    }

    /// Sends one frame to QEMU; `false` when QEMU's queue is full (retry on POLLOUT).
    /// A frame QEMU is not there to receive is dropped.
    fn send_to_qemu(&mut self, frame: &[u8]) -> io::Result<bool> {
        loop {
            match self.socket.send(frame) {
                Ok(_) => {
                    self.stats.to_guest += 1;
                    return Ok(true);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if peer_gone(&err) => {
                    self.drop_frame("QEMU is not receiving", &err);
                    return Ok(true);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Moves up to [`BATCH`] frames from QEMU to the tap; returns a frame that has to wait
    /// for the rate limit.
    fn qemu_to_tap(&mut self, buf: &mut [u8]) -> io::Result<Option<Throttled>> {
        for _ in 0..BATCH {
            let len = match self.socket.recv(buf) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if peer_gone(&err) => return Ok(None),
                Err(err) => return Err(err),
            };
            if len == 0 {
                continue;
            }
            if len > MAX_FRAME_BYTES {
                self.drop_frame(
                    "oversized frame from QEMU",
                    &io::Error::other(len.to_string()),
                );
                continue;
            }
            if let Err(until) = admit(&mut self.from_guest_limit, len, Instant::now()) {
                return Ok(Some(Throttled { len, until }));
            }
            self.write_to_tap(&buf[..len])?;
        }
        Ok(None)
    }

    /// Writes one frame to the tap; a tap that cannot take it drops it, as a NIC would.
    fn write_to_tap(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.tap.write(frame) {
                Ok(_) => {
                    self.stats.from_guest += 1;
                    return Ok(());
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The interface is down or its queue is full: a NIC drops the frame.
                Err(err)
                    if err.kind() == io::ErrorKind::WouldBlock
                        || err.raw_os_error() == Some(libc::EIO) =>
                {
                    self.drop_frame("the tap cannot take the frame", &err);
                    return Ok(());
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn drop_frame(&mut self, why: &'static str, err: &io::Error) {
        self.stats.dropped += 1;
        // The first drop and then every 1024th are logged; the count is logged at stop.
        if self.stats.dropped % 1024 == 1 {
            tracing::debug!(%err, dropped = self.stats.dropped, "dropping a frame: {why}");
        }
    }
}

/// Errors meaning QEMU's end is missing or closed (not started yet, or already gone).
fn peer_gone(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ENOTCONN)
    )
}

fn connect_with_retry(socket: &UnixDatagram, path: &Path) -> io::Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match socket.connect(path) {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let flags = fcntl(file, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Removes `path` if it is a unix socket (never a regular file or directory).
fn remove_socket_file(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|meta| meta.file_type().is_socket())
        .unwrap_or(false);
    if is_socket {
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(%err, path = %path.display(), "removing a relay socket file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A tap stand-in: a packet-preserving socket pair, non-blocking like a tap fd.
    fn fake_tap() -> (File, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let fd: std::os::fd::OwnedFd = ours.into();
        (File::from(fd), theirs)
    }

    fn qemu_end(dir: &Path) -> (UnixDatagram, PathBuf) {
        let path = dir.join("nic0-qemu.sock");
        (UnixDatagram::bind(&path).unwrap(), path)
    }

    #[test]
    fn frames_cross_in_both_directions_and_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("nic0.sock");
        let relay_socket = RelaySocket::bind("net0", "tap0", &ours).unwrap();
        assert_eq!(relay_socket.path(), ours);
        let (qemu, qemu_path) = qemu_end(dir.path());
        qemu.connect(&ours).unwrap();
        qemu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (tap, wire) = fake_tap();
        wire.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut relay = relay_socket
            .start(tap, &qemu_path, RateLimit::default())
            .unwrap();

        // Host side → guest: one datagram per frame, sizes preserved up to the maximum.
        let big = vec![0xabu8; MAX_FRAME_BYTES];
        for frame in [&b"hello-guest"[..], &big[..]] {
            wire.send(frame).unwrap();
            let mut buf = vec![0u8; MAX_FRAME_BYTES + 10];
            let n = qemu.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], frame);
        }
        // Guest → host side.
        qemu.send(b"hello-host").unwrap();
        let mut buf = [0u8; 64];
        let n = wire.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello-host");

        let stats = relay.stop().unwrap();
        assert_eq!(
            stats,
            RelayStats {
                to_guest: 2,
                from_guest: 1,
                dropped: 0
            }
        );
        assert!(
            !ours.exists() && !qemu_path.exists(),
            "socket files removed"
        );
        assert!(relay.stop().is_none(), "stop is idempotent");
    }

    #[test]
    fn only_qemus_socket_may_send_to_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("nic0.sock");
        let relay_socket = RelaySocket::bind("net0", "tap0", &ours).unwrap();
        let (_qemu, qemu_path) = qemu_end(dir.path());
        let (tap, _wire) = fake_tap();
        let _relay = relay_socket
            .start(tap, &qemu_path, RateLimit::default())
            .unwrap();
        let stranger = UnixDatagram::unbound().unwrap();
        assert!(stranger.send_to(b"spoof", &ours).is_err());
    }

    #[test]
    fn frames_wait_while_qemus_queue_is_full_and_none_are_lost() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("nic0.sock");
        let relay_socket = RelaySocket::bind("net0", "tap0", &ours).unwrap();
        let (qemu, qemu_path) = qemu_end(dir.path());
        let (tap, wire) = fake_tap();
        let mut relay = relay_socket
            .start(tap, &qemu_path, RateLimit::default())
            .unwrap();
        // Far more than a unix datagram queue holds (max_dgram_qlen, 10 by default).
        let count = 200u32;
        let writer = std::thread::spawn(move || {
            for i in 0..count {
                wire.send(&i.to_be_bytes()).unwrap();
            }
            wire
        });
        std::thread::sleep(Duration::from_millis(200));
        qemu.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for i in 0..count {
            let mut buf = [0u8; 8];
            let n = qemu.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes(), "frame {i} in order");
        }
        let _wire = writer.join().unwrap();
        let stats = relay.stop().unwrap();
        assert_eq!((stats.to_guest, stats.dropped), (u64::from(count), 0));
    }

    /// The least time `frames` frames take through a bucket of `per_second` that starts
    /// full (a 10 % margin for the timers).
    fn least_time(frames: u64, per_second: u64) -> Duration {
        Duration::from_secs_f64((frames - per_second) as f64 / per_second as f64 * 0.9)
    }

    #[test]
    fn frames_toward_the_guest_keep_to_the_byte_rate_and_none_are_lost() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("nic0.sock");
        let relay_socket = RelaySocket::bind("net0", "tap0", &ours).unwrap();
        let (qemu, qemu_path) = qemu_end(dir.path());
        let (tap, wire) = fake_tap();
        // 8 frames of 1 KiB a second; 16 frames.
        let limit = RateLimit::new(Some(8 * 1024), None);
        let mut relay = relay_socket.start(tap, &qemu_path, limit).unwrap();
        let count = 16u64;
        let start = Instant::now();
        let writer = std::thread::spawn(move || {
            for i in 0..count {
                let mut frame = vec![0u8; 1024];
                frame[..8].copy_from_slice(&i.to_be_bytes());
                wire.send(&frame).unwrap();
            }
            wire
        });
        qemu.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for i in 0..count {
            let mut buf = [0u8; 2048];
            let n = qemu.recv(&mut buf).unwrap();
            assert_eq!(
                (n, &buf[..8]),
                (1024, &i.to_be_bytes()[..]),
                "frame {i} in order"
            );
        }
        let elapsed = start.elapsed();
        let _wire = writer.join().unwrap();
        assert!(
            elapsed >= least_time(count, 8),
            "{count} KiB in {elapsed:?}"
        );
        let stats = relay.stop().unwrap();
        assert_eq!((stats.to_guest, stats.dropped), (count, 0));
    }

    #[test]
    fn frames_from_the_guest_keep_to_the_frame_rate() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("nic0.sock");
        let relay_socket = RelaySocket::bind("net0", "tap0", &ours).unwrap();
        let (qemu, qemu_path) = qemu_end(dir.path());
        qemu.connect(&ours).unwrap();
        let (tap, wire) = fake_tap();
        // 10 frames a second (a burst the stand-in tap's queue holds); 20 frames.
        let limit = RateLimit::new(None, Some(10));
        let mut relay = relay_socket.start(tap, &qemu_path, limit).unwrap();
        let count = 20u64;
        let start = Instant::now();
        for i in 0..count {
            qemu.send(&i.to_be_bytes()).unwrap();
        }
        wire.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for i in 0..count {
            let mut buf = [0u8; 16];
            let n = wire.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes(), "frame {i} in order");
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= least_time(count, 10),
            "{count} frames in {elapsed:?}"
        );
        let stats = relay.stop().unwrap();
        assert_eq!((stats.from_guest, stats.dropped), (count, 0));
    }

    #[test]
    fn frames_before_qemu_listens_are_dropped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("nic0.sock");
        let relay_socket = RelaySocket::bind("net0", "tap0", &ours).unwrap();
        let (qemu, qemu_path) = qemu_end(dir.path());
        let (tap, wire) = fake_tap();
        let mut relay = relay_socket
            .start(tap, &qemu_path, RateLimit::default())
            .unwrap();
        // QEMU goes away: frames toward it are dropped, the relay keeps running.
        drop(qemu);
        wire.send(b"lost").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let stats = relay.stop().unwrap();
        assert_eq!((stats.to_guest, stats.dropped), (0, 1));
    }

    #[test]
    fn a_relay_that_never_started_removes_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("nic0.sock");
        // A leftover socket file is replaced.
        let _stale = UnixStream::pair().unwrap();
        drop(UnixDatagram::bind(&ours).unwrap());
        let relay_socket = RelaySocket::bind("net0", "tap0", &ours).unwrap();
        assert!(ours.exists());
        drop(relay_socket);
        assert!(!ours.exists());
        let err =
            RelaySocket::bind("net0", "tap0", &dir.path().join("no/such/dir.sock")).unwrap_err();
        assert!(err.to_string().contains("net0"), "{err}");
    }
}
