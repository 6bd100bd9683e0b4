//! An epoll context for fuzz harnesses that call a worker's event handler directly.

use std::marker::PhantomData;

use vmm_sys_util::epoll::Epoll;

use super::{EpollContext, EventToken};

/// Runs `f` with a fresh epoll context, as the worker thread would give a handler.
pub(crate) fn with_context<T: EventToken, R>(f: impl FnOnce(&EpollContext<'_, T>) -> R) -> R {
    let epoll = Epoll::new().expect("epoll");
    let ctx = EpollContext {
        epoll: &epoll,
        _token: PhantomData,
    };
    f(&ctx)
}
