//! One bounded pass of a device worker over a virtqueue.
//!
//! A pass pops at most [`CHAINS_PER_PASS`] chains, then hands control back to the worker's
//! event loop (re-arming the queue's notification when work is left), so that a stop
//! request waiting there is seen promptly however fast the guest refills the ring.
//!
//! Before each pop the available index is checked: a driver that claims more new entries
//! than the queue holds has corrupted the ring, which no request-level error can recover
//! from. The pass reports it as [`QueueFault`] and the device asks for a reset
//! (`DEVICE_NEEDS_RESET`, virtio 1.x §2.1.2) instead of going silently dead.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::Interrupt;

/// Chains one pass pops at most: a full ring of the largest queue any device offers.
pub(crate) const CHAINS_PER_PASS: usize = 256;

/// Why a queue cannot be served any more until the driver resets the device.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueFault {
    /// The available index runs more than a ring's worth ahead of the device.
    #[error(
        "available index {avail} is {ahead} entries ahead of the device's {next}, \
         more than the queue's {size}"
    )]
    AvailIndexAhead {
        /// The driver's available index.
        avail: u16,
        /// The next entry the device would read.
        next: u16,
        /// How far ahead the driver claims to be.
        ahead: u16,
        /// Queue size.
        size: u16,
    },
    /// The available index cannot be read from guest memory.
    #[error("cannot read the available index: {0}")]
    AvailIndexUnreadable(#[source] virtio_queue::Error),
}

/// The chain budget of one pass.
#[derive(Debug)]
pub(crate) struct Pass {
    left: usize,
}

impl Default for Pass {
    fn default() -> Self {
        Self::new()
    }
}

impl Pass {
    /// A pass with the full budget.
    pub(crate) fn new() -> Self {
        Self {
            left: CHAINS_PER_PASS,
        }
    }

    /// The next available chain; `None` when the ring is empty or the budget is spent.
    pub(crate) fn next<'m>(
        &mut self,
        queue: &mut Queue,
        mem: &'m GuestMemoryMmap<()>,
    ) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap<()>>>, QueueFault> {
        if self.left == 0 {
            return Ok(None);
        }
        check_avail(queue, mem)?;
        let chain = queue.pop_descriptor_chain(mem);
        if chain.is_some() {
            self.left -= 1;
        }
        Ok(chain)
    }

    /// [`Pass::next`] for a device's worker: a fault is recorded in `health` (logged once,
    /// `DEVICE_NEEDS_RESET` raised) and ends the pass like an empty ring.
    pub(crate) fn next_healthy<'m>(
        &mut self,
        queue: &mut Queue,
        mem: &'m GuestMemoryMmap<()>,
        health: &mut Health,
        site: (&'static str, &'static str),
        interrupt: &Interrupt,
    ) -> Option<DescriptorChain<&'m GuestMemoryMmap<()>>> {
        match self.next(queue, mem) {
            Ok(chain) => chain,
            Err(fault) => {
                health.fail(site.0, site.1, &fault, interrupt);
                None
            }
        }
    }

    /// Whether the pass stopped on its budget (work may be left in the ring).
    pub(crate) fn budget_spent(&self) -> bool {
        self.left == 0
    }

    /// Ends the pass: when the budget ran out, notifies `event` so the worker comes back
    /// for the rest after looking at its other events (a stop request among them).
    pub(crate) fn finish(self, event: &EventFd) {
        if self.budget_spent() {
            if let Err(err) = event.write(1) {
                tracing::error!(%err, "cannot re-arm the queue; the rest waits for the next notification");
            }
        }
    }
}

/// Checks that the driver's available index is at most a ring ahead of the device.
pub(crate) fn check_avail(queue: &Queue, mem: &GuestMemoryMmap<()>) -> Result<(), QueueFault> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(QueueFault::AvailIndexUnreadable)?;
    let next = queue.next_avail();
    let ahead = (avail - Wrapping(next)).0;
    if ahead > queue.size() {
        return Err(QueueFault::AvailIndexAhead {
            avail: avail.0,
            next,
            ahead,
            size: queue.size(),
        });
    }
    Ok(())
}

/// Whether a device's queues still work; the first fault is logged and turned into a
/// reset request, later events are ignored until the driver resets the device.
#[derive(Debug, Default)]
pub(crate) struct Health {
    broken: bool,
}

impl Health {
    /// Whether a queue fault was seen.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Records a fault on `queue` of `device`: logs it once, sets `DEVICE_NEEDS_RESET` and
    /// raises the configuration interrupt.
    pub(crate) fn fail(
        &mut self,
        device: &'static str,
        queue: &str,
        fault: &dyn std::fmt::Display,
        interrupt: &Interrupt,
    ) {
        if self.broken {
            return;
        }
        self.broken = true;
        tracing::error!(
            device,
            queue,
            %fault,
            "queue corrupted by the driver; the device needs a reset"
        );
        if let Err(err) = interrupt.signal_needs_reset() {
            tracing::error!(device, %err, "cannot raise the configuration interrupt");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_memory, QueueDriver};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn a_pass_stops_at_its_budget_and_re_arms_the_queue() {
        let mem = test_memory();
        let mut driver = QueueDriver::new(&mem, 256);
        let mut queue = driver.queue();
        for _ in 0..256 {
            driver.add_chain(&[(8, false)]);
        }
        let mut pass = Pass { left: 100 };
        let mut popped = 0;
        while let Some(chain) = pass.next(&mut queue, &mem).expect("healthy") {
            popped += 1;
            queue.add_used(&mem, chain.head_index(), 0).expect("used");
        }
        assert_eq!(popped, 100);
        assert!(pass.budget_spent());
        let event = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        pass.finish(&event);
        assert_eq!(event.read().expect("re-armed"), 1);

        // A pass that drains the ring does not re-arm.
        let mut pass = Pass::new();
        while pass.next(&mut queue, &mem).expect("healthy").is_some() {}
        assert!(!pass.budget_spent());
        pass.finish(&event);
        assert!(event.read().is_err());
    }

    #[test]
    fn an_avail_index_more_than_a_ring_ahead_is_a_fault() {
        let mem = test_memory();
        let driver = QueueDriver::new(&mem, 16);
        let mut queue = driver.queue();
        let (_, avail_ring, _) = driver.ring_addresses();
        // The avail ring's idx field follows its 16-bit flags.
        mem.write_obj(17u16, GuestAddress(avail_ring + 2))
            .expect("idx");
        let fault = Pass::new()
            .next(&mut queue, &mem)
            .expect_err("ring corrupted");
        assert!(matches!(
            fault,
            QueueFault::AvailIndexAhead {
                ahead: 17,
                size: 16,
                ..
            }
        ));

        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let mut health = Health::default();
        health.fail("virtio-test", "requests", &fault, &interrupt);
        health.fail("virtio-test", "requests", &fault, &interrupt);
        assert!(health.is_broken());
        assert!(interrupt.needs_reset());
        assert_eq!(interrupt.irq_event().read().expect("one interrupt"), 1);
    }
}
