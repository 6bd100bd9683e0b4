//! Descriptor chains: popping with the per-pass bounds, parsing (indirect tables, order,
//! bounds) and gather/scatter at fuzzer-chosen offsets.

use virtio_queue::QueueT;

use super::guest::{memory, Input, QueueLayout, PASSES};
use crate::chain::ChainBuffers;
use crate::queue_pass::Pass;

/// Largest gather/scatter the harness asks for.
const MAX_COPY: usize = 0x2_0000;

/// One queue of chains; every chain is parsed, gathered from and scattered to.
pub fn virtio_chain(data: &[u8]) {
    let mut input = Input::new(data);
    let skip = usize::from(input.u16());
    let len = usize::from(input.u16()) % MAX_COPY;
    let layout = QueueLayout::read(&mut input);
    let mem = memory(input.rest());
    let mut queue = layout.queue(&mem);
    let mut buf = vec![0u8; len];
    for _ in 0..PASSES {
        let mut pass = Pass::new();
        loop {
            let chain = match pass.next(&mut queue, &mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(_) => return,
            };
            let head = chain.head_index();
            let mut used = 0;
            if let Ok(buffers) = ChainBuffers::parse(chain) {
                assert_eq!(buffers.head(), head);
                if let Ok(got) = buffers.gather(&mem, skip, &mut buf) {
                    assert!(got <= buf.len());
                    assert!(got <= buffers.readable_len().saturating_sub(skip));
                }
                if let Ok(put) = buffers.scatter(&mem, skip, &buf) {
                    assert!(put <= buffers.writable_len().saturating_sub(skip));
                    used = u32::try_from(put).expect("bounded by MAX_COPY");
                }
            }
            // A used ring outside memory is the driver's problem, not a device failure.
            let _ = queue.add_used(&mem, head, used);
        }
        if !pass.budget_spent() {
            break;
        }
    }
}
