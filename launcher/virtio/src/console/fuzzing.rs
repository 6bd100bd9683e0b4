//! virtio-console from fuzzer bytes: the real worker handler, a connected client on a
//! socket pair, and a script of worker events.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use vmm_sys_util::epoll::EventSet;

use super::{client_events, ConsoleToken, ConsoleWorker};
use crate::fuzzing::guest::{event, memory, Input, QueueLayout};
use crate::interrupt::Interrupt;
use crate::log_limit::LogLimiter;
use crate::queue_pass::Health;
use crate::worker::fuzzing::with_context;
use crate::worker::EventHandler;

/// Most client bytes one input sends.
const MAX_CLIENT_INPUT: usize = 8192;
/// Most worker events one input raises.
const MAX_EVENTS: usize = 16;

/// The worker's listening socket (never connected to: the client is a socket pair).
struct Listener {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: Arc<UnixListener>,
}

fn listener() -> &'static Listener {
    static LISTENER: OnceLock<Listener> = OnceLock::new();
    LISTENER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("scratch directory");
        let path = dir.path().join("console.sock");
        let socket = UnixListener::bind(&path).expect("bind");
        socket.set_nonblocking(true).expect("non-blocking listener");
        Listener {
            _dir: dir,
            path,
            socket: Arc::new(socket),
        }
    })
}

/// Input: a flags byte (bit 0: a client is connected, bit 1: it has shut down its
/// writing side), the RX and TX queue layouts, the client's bytes (2-byte length), the
/// event script (1-byte length), then guest memory.
pub fn console_queues(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let rx_layout = QueueLayout::read(&mut input);
    let tx_layout = QueueLayout::read(&mut input);
    let client_len = usize::from(input.u16()) % (MAX_CLIENT_INPUT + 1);
    let client_bytes = input.take(client_len);
    let script_len = usize::from(input.u8()) % (MAX_EVENTS + 1);
    let script = input.take(script_len);
    let mem = memory(input.rest());
    let (rx, tx) = (rx_layout.queue(&mem), tx_layout.queue(&mem));
    let listener = listener();

    let (client, peer) = if flags & 1 != 0 {
        let (client, mut peer) = UnixStream::pair().expect("socket pair");
        client.set_nonblocking(true).expect("non-blocking client");
        peer.set_nonblocking(true).expect("non-blocking peer");
        let _ = peer.write(client_bytes);
        if flags & 2 != 0 {
            let _ = peer.shutdown(Shutdown::Write);
        }
        (Some(client), Some(peer))
    } else {
        (None, None)
    };
    let mut worker = ConsoleWorker {
        mem,
        rx,
        rx_event: event(),
        tx,
        tx_event: event(),
        interrupt: Arc::new(Interrupt::new(event())),
        path: listener.path.clone(),
        listener: listener.socket.clone(),
        client: None,
        input: VecDeque::new(),
        input_full: false,
        output: VecDeque::new(),
        health: Health::default(),
        log: LogLimiter::default(),
    };
    with_context(|ctx| {
        if let Some(client) = client {
            ctx.add(&client, ConsoleToken::Client, client_events())
                .expect("register the client");
            worker.client = Some(client);
        }
        for &step in script {
            let (token, events) = match step % 4 {
                0 => (ConsoleToken::RxQueue, EventSet::IN),
                1 => (ConsoleToken::TxQueue, EventSet::IN),
                2 => (ConsoleToken::Listener, EventSet::IN),
                _ => (ConsoleToken::Client, client_event_set(step >> 2)),
            };
            worker.handle_event(ctx, token, events);
        }
    });
    drop(peer);
}

/// Client readiness from five bits: IN, OUT, read hang-up, hang-up, error.
fn client_event_set(bits: u8) -> EventSet {
    [
        EventSet::IN,
        EventSet::OUT,
        EventSet::READ_HANG_UP,
        EventSet::HANG_UP,
        EventSet::ERROR,
    ]
    .iter()
    .enumerate()
    .filter(|(i, _)| bits & (1 << i) != 0)
    .fold(EventSet::empty(), |set, (_, &bit)| set | bit)
}
