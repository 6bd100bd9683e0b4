//! A device worker thread: an epoll loop over the device's file descriptors plus a kill
//! EventFd, so that reset and drop can stop the thread and join it.

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What every worker thread runs first, before it serves a queue (the launcher installs
/// its device-worker seccomp filter there); an error stops the worker and marks the device
/// as needing a reset.
pub type ThreadInit = fn() -> Result<(), String>;

static THREAD_INIT: std::sync::OnceLock<ThreadInit> = std::sync::OnceLock::new();

/// Sets the [`ThreadInit`] of every worker thread started from now on; only the first
/// call counts (returns whether it was this one).
pub fn set_thread_init(init: ThreadInit) -> bool {
    THREAD_INIT.set(init).is_ok()
}

/// Stack size of the launcher's own threads (device workers, vCPUs, its runtime's
/// workers): one page short of 2 MiB. A thread touches a few KiB of its stack, but a stack
/// of exactly 2 MiB that happens to start on a 2 MiB boundary (the first one mapped right
/// below the huge-page-aligned guest RAM does) is backed by a transparent huge page on its
/// first touch, 2 MiB resident for nothing; one page less can never hold an aligned 2 MiB.
pub const THREAD_STACK_BYTES: usize = (2 << 20) - 4096;

/// Epoll data value reserved for the kill EventFd.
const KILL_TOKEN: u64 = u64::MAX;
/// Events fetched per `epoll_wait`.
const EVENT_BATCH: usize = 32;

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

/// Why a worker thread could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `epoll_create1` failed.
    #[error("worker {name}: cannot create the epoll instance: {source}")]
    CreateEpoll {
        /// Thread name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The kill EventFd could not be created or registered.
    #[error("worker {name}: cannot set up the kill eventfd: {source}")]
    KillEvent {
        /// Thread name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The device's file descriptors could not be registered with epoll.
    #[error("worker {name}: cannot register the device file descriptors with epoll: {source}")]
    Register {
        /// Thread name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The OS refused to create the thread.
    #[error("worker {name}: cannot spawn the thread: {source}")]
    Spawn {
        /// Thread name.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// A typed epoll dispatch id of one device.
pub(crate) trait EventToken: Copy + std::fmt::Debug + Send + 'static {
    /// The epoll data value (must not be `u64::MAX`).
    fn to_raw(self) -> u64;
    /// The token for an epoll data value, if it is one of ours.
    fn from_raw(raw: u64) -> Option<Self>;
}

/// The epoll instance as seen by a handler: add, modify and remove its own fds.
pub(crate) struct EpollContext<'a, T> {
    epoll: &'a Epoll,
    _token: PhantomData<T>,
}

impl<T: EventToken> EpollContext<'_, T> {
    /// Starts watching `fd` for `events`, reporting them as `token`.
    pub(crate) fn add(&self, fd: &impl AsRawFd, token: T, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(events, token.to_raw()),
        )
    }

    /// Stops watching `fd`.
    pub(crate) fn delete(&self, fd: &impl AsRawFd) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        )
    }
}

/// The device side of a worker: registers its fds and handles their events.
pub(crate) trait EventHandler: Send + 'static {
    /// The handler's dispatch ids.
    type Token: EventToken;

    /// Registers the handler's fds; runs on the caller's thread before the worker starts,
    /// so that a failure is reported by `activate`.
    fn register(&mut self, ctx: &EpollContext<'_, Self::Token>) -> io::Result<()>;

    /// Handles one ready fd. Errors are the handler's to log: the loop goes on.
    fn handle_event(
        &mut self,
        ctx: &EpollContext<'_, Self::Token>,
        token: Self::Token,
        events: EventSet,
    );

    /// The loop cannot go on (its epoll instance failed): the device is dead until a reset
    /// and should say so to the driver (`DEVICE_NEEDS_RESET`).
    fn fail(&mut self, fault: &dyn std::fmt::Display);
}

/// A running worker thread; stopping (or dropping) it kills the loop and joins the thread.
pub(crate) struct Worker<H> {
    name: String,
    kill: EventFd,
    thread: Option<JoinHandle<H>>,
}

impl<H: EventHandler> Worker<H> {
    /// Registers `handler`'s fds and starts its loop on a thread called `name`.
    pub(crate) fn spawn(name: &str, mut handler: H) -> Result<Self, WorkerError> {
        let epoll = Epoll::new().map_err(|source| WorkerError::CreateEpoll {
            name: name.to_string(),
            source,
        })?;
        let kill_error = |source| WorkerError::KillEvent {
            name: name.to_string(),
            source,
        };
        let kill = EventFd::new(EFD_NONBLOCK).map_err(kill_error)?;
        let thread_kill = kill.try_clone().map_err(kill_error)?;
        epoll
            .ctl(
                ControlOperation::Add,
                thread_kill.as_raw_fd(),
                EpollEvent::new(EventSet::IN, KILL_TOKEN),
            )
            .map_err(kill_error)?;
        handler
            .register(&EpollContext {
                epoll: &epoll,
                _token: PhantomData,
            })
            .map_err(|source| WorkerError::Register {
                name: name.to_string(),
                source,
            })?;
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || run_loop(&thread_name, epoll, thread_kill, handler))
            .map_err(|source| WorkerError::Spawn {
                name: name.to_string(),
                source,
            })?;
        Ok(Self {
            name: name.to_string(),
            kill,
            thread: Some(thread),
        })
    }

    /// Stops the loop, joins the thread and hands the handler back (`None` if the thread
    /// panicked).
    pub(crate) fn stop(mut self) -> Option<H> {
        self.stop_and_join()
    }
}

impl<H> Worker<H> {
    fn stop_and_join(&mut self) -> Option<H> {
        let thread = self.thread.take()?;
        if let Err(err) = self.kill.write(1) {
            tracing::error!(worker = %self.name, %err, "cannot signal the worker to stop");
        }
        match thread.join() {
            Ok(handler) => Some(handler),
            Err(_) => {
                tracing::error!(worker = %self.name, "worker thread panicked");
                None
            }
        }
    }
}

impl<H> Drop for Worker<H> {
    fn drop(&mut self) {
        // The handler (and the device resources it holds) is dropped here.
        let _ = self.stop_and_join();
    }
}

/// Clears a queue notification EventFd (nothing pending is fine).
pub(crate) fn drain_event(event: &EventFd) {
    if let Err(err) = event.read() {
        if err.kind() != io::ErrorKind::WouldBlock {
            tracing::warn!(%err, "cannot read a queue event");
        }
    }
}

fn run_loop<H: EventHandler>(name: &str, epoll: Epoll, kill: EventFd, mut handler: H) -> H {
    let span = tracing::debug_span!("virtio_worker", worker = %name);
    let _entered = span.enter();
    if let Some(init) = THREAD_INIT.get() {
        if let Err(reason) = init() {
            tracing::error!(%reason, "worker thread setup failed; the worker stops");
            handler.fail(&format_args!("worker thread setup failed: {reason}"));
            return handler;
        }
    }
    tracing::debug!("worker started");
    let ctx = EpollContext {
        epoll: &epoll,
        _token: PhantomData,
    };
    let mut events = vec![EpollEvent::default(); EVENT_BATCH];
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::error!(%err, "epoll_wait failed; the worker stops");
                handler.fail(&format_args!("the worker's epoll_wait failed: {err}"));
                return handler;
            }
        };
        let ready = &events[..count];
        // A stop request wins over device work that became ready at the same time: the
        // caller waiting for it may be a vCPU thread (a driver resetting the device).
        if ready.iter().any(|event| event.data() == KILL_TOKEN) {
            // Drain the counter so that a reused EventFd would not fire again.
            let _ = kill.read();
            tracing::debug!("worker stopped");
            return handler;
        }
        for event in ready {
            let raw = event.data();
            match H::Token::from_raw(raw) {
                Some(token) => handler.handle_event(&ctx, token, event.event_set()),
                None => tracing::warn!(raw, "event with an unknown token"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum TestToken {
        Event,
    }

    impl EventToken for TestToken {
        fn to_raw(self) -> u64 {
            0
        }
        fn from_raw(raw: u64) -> Option<Self> {
            (raw == 0).then_some(TestToken::Event)
        }
    }

    struct Counter {
        event: EventFd,
        seen: u64,
        tx: mpsc::Sender<u64>,
    }

    impl EventHandler for Counter {
        type Token = TestToken;
        fn register(&mut self, ctx: &EpollContext<'_, TestToken>) -> io::Result<()> {
            ctx.add(&self.event, TestToken::Event, EventSet::IN)
        }
        fn handle_event(&mut self, _: &EpollContext<'_, TestToken>, token: TestToken, _: EventSet) {
            assert_eq!(token, TestToken::Event);
            self.seen += self.event.read().expect("read");
            self.tx.send(self.seen).expect("send");
        }
        fn fail(&mut self, fault: &dyn std::fmt::Display) {
            panic!("unexpected worker failure: {fault}");
        }
    }

    #[test]
    fn worker_dispatches_events_and_stops() {
        let event = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let trigger = event.try_clone().expect("clone");
        let (tx, rx) = mpsc::channel();
        let worker = Worker::spawn("test-worker", Counter { event, seen: 0, tx }).expect("spawn");
        trigger.write(3).expect("write");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("event"), 3);
        let handler = worker.stop().expect("handler back");
        assert_eq!(handler.seen, 3);
    }

    /// A handler that always has more work: each event re-arms itself.
    struct Endless {
        event: EventFd,
        passes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl EventHandler for Endless {
        type Token = TestToken;
        fn register(&mut self, ctx: &EpollContext<'_, TestToken>) -> io::Result<()> {
            ctx.add(&self.event, TestToken::Event, EventSet::IN)
        }
        fn handle_event(&mut self, _: &EpollContext<'_, TestToken>, _: TestToken, _: EventSet) {
            self.passes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.event.write(1).expect("re-arm");
        }
        fn fail(&mut self, fault: &dyn std::fmt::Display) {
            panic!("unexpected worker failure: {fault}");
        }
    }

    #[test]
    fn a_stop_request_wins_over_a_device_that_always_has_work() {
        let event = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        event.write(1).expect("first event");
        let passes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let worker = Worker::spawn(
            "test-worker-endless",
            Endless {
                event,
                passes: passes.clone(),
            },
        )
        .expect("spawn");
        while passes.load(std::sync::atomic::Ordering::Relaxed) < 100 {
            std::thread::yield_now();
        }
        assert!(worker.stop().is_some());
    }

    #[test]
    fn dropping_a_worker_joins_it() {
        let event = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let (tx, rx) = mpsc::channel();
        let worker =
            Worker::spawn("test-worker-drop", Counter { event, seen: 0, tx }).expect("spawn");
        drop(worker);
        // The handler (and its sender) is gone once the thread was joined.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::TryRecvError::Disconnected)
        ));
    }
}
