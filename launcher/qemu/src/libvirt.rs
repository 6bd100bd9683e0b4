//! The libvirt plumbing the `virt` crate does not wrap: the process-wide event loop, and
//! domain lifecycle/reboot events and connection-close notifications delivered as
//! [`RawEvent`]s on a channel.
//!
//! libvirt dispatches events from whichever thread runs `virEventRunDefaultImpl`; this
//! module starts one such thread per process ([`ensure_event_loop`]), which must happen
//! before the connection is opened. Callbacks only push onto a channel; the domain
//! monitor ([`crate::monitor`]) decides what the events mean.

use std::os::raw::{c_int, c_void};
use std::sync::mpsc::Sender;
use std::sync::{Mutex, OnceLock};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// libvirt URI used unless [`URI_ENV`] says otherwise: the system QEMU driver.
pub const DEFAULT_URI: &str = "qemu:///system";
/// Environment variable that overrides the libvirt URI.
pub const URI_ENV: &str = "IRONVISOR_LIBVIRT_URI";
/// Seconds between keepalive probes of the libvirtd connection.
pub const KEEPALIVE_INTERVAL_SECS: i32 = 5;
/// Unanswered keepalive probes after which the connection counts as lost.
pub const KEEPALIVE_COUNT: u32 = 3;

/// Why talking to libvirt failed. Each variant names the operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LibvirtError {
    /// `virEventRegisterDefaultImpl` failed (process-wide, once).
    #[error("starting libvirt's event loop: {0}")]
    EventLoop(String),
    /// The connection to libvirtd could not be opened.
    #[error(
        "connecting to libvirt at {uri}: {source} (is libvirtd running? \
         launcher/qemu/setup-libvirt.sh installs and starts it)"
    )]
    Connect {
        /// The libvirt URI.
        uri: String,
        /// The libvirt error.
        #[source]
        source: virt::error::Error,
    },
    /// Registering an event callback failed.
    #[error("registering for {what} events of domain {domain}: {source}")]
    Register {
        /// "lifecycle", "reboot", "connection close".
        what: &'static str,
        /// The domain name.
        domain: String,
        /// The libvirt error.
        #[source]
        source: virt::error::Error,
    },
}

/// An event as libvirt delivered it, before interpretation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEvent {
    /// `VIR_DOMAIN_EVENT_ID_LIFECYCLE`: `event` is a `virDomainEventType`, `detail` the
    /// matching `virDomainEvent*DetailType`.
    Lifecycle {
        /// `VIR_DOMAIN_EVENT_STARTED`, `..._STOPPED`, ...
        event: i32,
        /// Detail code of that event type.
        detail: i32,
    },
    /// `VIR_DOMAIN_EVENT_ID_REBOOT`: the guest reset itself.
    Reboot,
    /// The connection to libvirtd closed (`virConnectCloseReason`).
    ConnectionClosed {
        /// `VIR_CONNECT_CLOSE_REASON_*`.
        reason: i32,
    },
}

/// The libvirt URI to use: [`URI_ENV`] if set and non-empty, else [`DEFAULT_URI`].
pub fn uri_from_env() -> String {
    std::env::var(URI_ENV)
        .ok()
        .filter(|uri| !uri.is_empty())
        .unwrap_or_else(|| DEFAULT_URI.to_string())
}

/// Registers libvirt's default event loop and starts the thread that runs it, once per
/// process. Must be called before [`connect`] for events to reach the connection.
pub fn ensure_event_loop() -> Result<(), LibvirtError> {
    static STARTED: OnceLock<Result<(), LibvirtError>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            // libvirt prints every error to stderr by default; they are returned and
            // logged with context instead.
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl()
                .map_err(|err| LibvirtError::EventLoop(err.to_string()))?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if let Err(err) = virt::event::event_run_default_impl() {
                        tracing::error!(%err, "libvirt event loop iteration failed");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                })
                .map_err(|err| LibvirtError::EventLoop(format!("spawning its thread: {err}")))?;
            Ok(())
        })
        .clone()
}

/// Opens a read-write connection to libvirt at `uri`, with keepalive so that a dead
/// libvirtd is noticed.
pub fn connect(uri: &str) -> Result<Connect, LibvirtError> {
    ensure_event_loop()?;
    let conn = Connect::open(Some(uri)).map_err(|source| LibvirtError::Connect {
        uri: uri.to_string(),
        source,
    })?;
    if let Err(err) = conn.set_keep_alive(KEEPALIVE_INTERVAL_SECS, KEEPALIVE_COUNT) {
        tracing::warn!(%err, uri, "cannot enable libvirt keepalive; a dead libvirtd may go unnoticed");
    }
    Ok(conn)
}

/// Callback registrations of one domain; dropping it deregisters them.
pub struct DomainWatch {
    conn: Connect,
    callback_ids: Vec<c_int>,
    close_registered: bool,
}

impl std::fmt::Debug for DomainWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainWatch")
            .field("callback_ids", &self.callback_ids)
            .field("close_registered", &self.close_registered)
            .finish()
    }
}

/// What a callback's opaque pointer points at: the channel, behind a mutex because
/// `Sender` is not `Sync` and libvirt owns the pointer until its free callback.
type Opaque = Mutex<Sender<RawEvent>>;

fn deliver(opaque: *mut c_void, event: RawEvent) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: `opaque` is the `Box<Opaque>` leaked at registration; libvirt keeps it alive
    // until it calls `free_opaque`, which happens only after the last callback returned.
    let sender = unsafe { &*(opaque as *const Opaque) };
    let sender = sender
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A closed receiver means the monitor is gone and nobody cares any more.
    let _ = sender.send(event);
}

unsafe extern "C" fn lifecycle_callback(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    deliver(opaque, RawEvent::Lifecycle { event, detail });
    0
}

unsafe extern "C" fn reboot_callback(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    deliver(opaque, RawEvent::Reboot);
}

unsafe extern "C" fn close_callback(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    deliver(opaque, RawEvent::ConnectionClosed { reason });
}

unsafe extern "C" fn free_opaque(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the pointer came from `Box::into_raw` in `leak_sender`, and libvirt
        // calls the free callback exactly once.
        drop(unsafe { Box::from_raw(opaque as *mut Opaque) });
    }
}

fn leak_sender(tx: &Sender<RawEvent>) -> *mut c_void {
    Box::into_raw(Box::new(Mutex::new(tx.clone()))) as *mut c_void
}

/// Sends `dom`'s lifecycle and reboot events, and the connection's close, to `tx` until
/// the returned watch is dropped.
pub fn watch_domain(
    conn: &Connect,
    dom: &Domain,
    domain_name: &str,
    tx: &Sender<RawEvent>,
) -> Result<DomainWatch, LibvirtError> {
    let mut watch = DomainWatch {
        conn: conn.clone(),
        callback_ids: Vec::new(),
        close_registered: false,
    };
    // The C API takes every domain callback as the generic type and casts it back by
    // event id (libvirt's VIR_DOMAIN_EVENT_CALLBACK macro does the same cast).
    // SAFETY: both are `extern "C"` function pointers; libvirt calls the lifecycle callback
    // with the lifecycle signature for VIR_DOMAIN_EVENT_ID_LIFECYCLE.
    let lifecycle: unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void) = unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                c_int,
                c_int,
                *mut c_void,
            ) -> c_int,
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(lifecycle_callback)
    };
    let registrations = [
        ("lifecycle", sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
        (
            "reboot",
            sys::VIR_DOMAIN_EVENT_ID_REBOOT,
            reboot_callback as unsafe extern "C" fn(_, _, _),
        ),
    ];
    for (what, event_id, callback) in registrations {
        let opaque = leak_sender(tx);
        // SAFETY: the connection and domain pointers are valid for the call; `opaque` is
        // owned by libvirt from here on and released through `free_opaque`.
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                dom.as_ptr(),
                event_id as c_int,
                Some(callback),
                opaque,
                Some(free_opaque),
            )
        };
        if id < 0 {
            let source = virt::error::Error::last_error();
            // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
            unsafe { free_opaque(opaque) };
            return Err(LibvirtError::Register {
                what,
                domain: domain_name.to_string(),
                source,
            });
        }
        watch.callback_ids.push(id);
    }
    let opaque = leak_sender(tx);
    // SAFETY: as above, for the connection's single close callback.
    let ret = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_callback),
            opaque,
            Some(free_opaque),
        )
    };
    if ret < 0 {
        let source = virt::error::Error::last_error();
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        unsafe { free_opaque(opaque) };
        return Err(LibvirtError::Register {
            what: "connection close",
            domain: domain_name.to_string(),
            source,
        });
    }
    watch.close_registered = true;
    Ok(watch)
}

impl Drop for DomainWatch {
    fn drop(&mut self) {
        for id in self.callback_ids.drain(..) {
            // SAFETY: `id` came from a successful registration on this connection.
            let ret = unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), id) };
            if ret < 0 {
                tracing::debug!(
                    id,
                    err = %virt::error::Error::last_error(),
                    "deregistering a libvirt domain event callback"
                );
            }
        }
        if self.close_registered {
            // SAFETY: the close callback was registered on this connection.
            let ret = unsafe {
                sys::virConnectUnregisterCloseCallback(self.conn.as_ptr(), Some(close_callback))
            };
            if ret < 0 {
                tracing::debug!(
                    err = %virt::error::Error::last_error(),
                    "unregistering the libvirt close callback"
                );
            }
        }
        if let Err(err) = self.conn.close() {
            tracing::debug!(%err, "closing the event watch's libvirt connection reference");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_deliver_to_the_channel_and_free_releases_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        let opaque = leak_sender(&tx);
        // SAFETY: `opaque` is a leaked `Opaque`, as libvirt would pass it.
        unsafe {
            lifecycle_callback(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_STOPPED as c_int,
                sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN as c_int,
                opaque,
            );
            reboot_callback(std::ptr::null_mut(), std::ptr::null_mut(), opaque);
            close_callback(std::ptr::null_mut(), 1, opaque);
            free_opaque(opaque);
        }
        drop(tx);
        let events: Vec<RawEvent> = rx.iter().collect();
        assert_eq!(
            events,
            [
                RawEvent::Lifecycle {
                    event: sys::VIR_DOMAIN_EVENT_STOPPED as i32,
                    detail: 0
                },
                RawEvent::Reboot,
                RawEvent::ConnectionClosed { reason: 1 },
            ]
        );
    }

    #[test]
    fn null_opaque_is_ignored() {
        deliver(std::ptr::null_mut(), RawEvent::Reboot);
    }
}
