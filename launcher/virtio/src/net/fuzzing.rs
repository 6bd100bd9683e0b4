//! virtio-net from fuzzer bytes: the real worker handler over a datagram socket pair
//! standing in for the tap.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use vmm_sys_util::epoll::EventSet;

use super::tap::Tap;
use super::{NetToken, NetWorker, MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE};
use crate::device::DeviceQueue;
use crate::fuzzing::guest::{event, memory, Input, QueueLayout, PASSES};
use crate::interrupt::Interrupt;
use crate::worker::fuzzing::with_context;
use crate::worker::EventHandler;

/// Most frames the host side sends per input.
const MAX_RX_FRAMES: usize = 8;

/// Guest transmit: the TX queue is notified [`PASSES`] times.
///
/// Input: RX and TX queue layouts, then guest memory.
pub fn net_tx(data: &[u8]) {
    let mut input = Input::new(data);
    let rx = QueueLayout::read(&mut input);
    let tx = QueueLayout::read(&mut input);
    run(rx, tx, &[], input.rest(), &[NetToken::TxQueue; PASSES]);
}

/// Guest receive: frames arrive on the tap, then the driver notifies the RX queue.
///
/// Input: RX and TX queue layouts, the frame count (1 byte), per frame a 2-byte length
/// and that many bytes (zero-padded when the input runs out), then guest memory.
pub fn net_rx(data: &[u8]) {
    let mut input = Input::new(data);
    let rx = QueueLayout::read(&mut input);
    let tx = QueueLayout::read(&mut input);
    let count = usize::from(input.u8()) % (MAX_RX_FRAMES + 1);
    let frames: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let len = usize::from(input.u16()).min(MAX_FRAME_LEN);
            let mut frame = vec![0u8; len];
            let bytes = input.take(len);
            frame[..bytes.len()].copy_from_slice(bytes);
            frame
        })
        .collect();
    run(
        rx,
        tx,
        &frames,
        input.rest(),
        &[NetToken::Tap, NetToken::RxQueue, NetToken::RxQueue],
    );
}

fn run(rx: QueueLayout, tx: QueueLayout, frames: &[Vec<u8>], guest: &[u8], script: &[NetToken]) {
    let mem = memory(guest);
    let (tap_end, peer) = UnixDatagram::pair().expect("socket pair");
    tap_end.set_nonblocking(true).expect("non-blocking tap");
    peer.set_nonblocking(true).expect("non-blocking peer");
    for frame in frames {
        let _ = peer.send(frame);
    }
    let tap = Tap::from_socket(OwnedFd::from(tap_end));
    let queue = |index, layout: QueueLayout| DeviceQueue {
        index,
        queue: layout.queue(&mem),
        event: event(),
    };
    let (rx, tx) = (queue(RX_QUEUE, rx), queue(TX_QUEUE, tx));
    let interrupt = Arc::new(Interrupt::new(event()));
    let mut worker = NetWorker::new(mem.clone(), rx, tx, Arc::new(tap), interrupt);
    with_context(|ctx| {
        for &token in script {
            worker.handle_event(ctx, token, EventSet::IN);
        }
    });
    drop(peer);
}
