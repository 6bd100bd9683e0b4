//! The VM's tap devices, opened by the launcher itself in **its own** network namespace.
//!
//! QEMU never sees the tap: the launcher holds the tap's file descriptor and the
//! [`relay`](crate::relay) copies frames between it and QEMU (see that module for why).
//! A tap that already exists (the node agent creates a persistent `tap0` inside the VM's
//! network namespace) is attached to and left in place when the VM ends. A tap that does
//! not exist is created **non-persistent** and brought up: the kernel deletes it when the
//! launcher's last descriptor of it closes, which is when the VM ends — even if the
//! launcher is killed — keeping the KVM launcher's "created if missing, removed on exit"
//! contract.
//!
//! Existence is decided in the calling thread's network namespace (`if_nametoindex`, a
//! socket ioctl), never through `/sys/class/net`: a process that joined a namespace with
//! `setns(2)` still sees the sysfs mounted for its original namespace.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const TUN_PATH: &str = "/dev/net/tun";

/// Why a tap could not be prepared or removed. Each variant names the interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name (too long or contains NUL).
    #[error("tap {name:?}: not a valid interface name (at most 15 bytes, no NUL)")]
    BadName {
        /// The tap name.
        name: String,
    },
    /// An interface of that name exists in this network namespace but is not a tap.
    #[error("interface {name} exists in the launcher's network namespace but is not a tap device")]
    NotTap {
        /// The interface name.
        name: String,
    },
    /// The tap exists but another process has it open (taps here are single-queue).
    #[error("tap {name} is already in use by another process (TUNSETIFF: {source})")]
    Busy {
        /// The tap name.
        name: String,
        /// The OS error (EBUSY).
        #[source]
        source: io::Error,
    },
    /// /dev/net/tun could not be opened.
    #[error("tap {name}: opening {TUN_PATH}: {source}")]
    OpenTun {
        /// The tap name.
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An ioctl on the tap failed.
    #[error("tap {name}: {op} failed: {source}")]
    Ioctl {
        /// The tap name.
        name: String,
        /// "TUNSETIFF", "SIOCSIFFLAGS", ...
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// An open tap the VM uses. Dropping it (or [`TapGuard::remove`]) closes the launcher's
/// descriptor; a tap the launcher created disappears once no descriptor is left.
#[derive(Debug)]
pub struct TapGuard {
    name: String,
    created: bool,
    file: Option<File>,
}

impl TapGuard {
    /// Attaches to the tap `name` in the current network namespace, or creates it
    /// (non-persistent, up) if no interface of that name exists there.
    pub fn ensure(name: &str) -> Result<Self, TapError> {
        let _span = tracing::debug_span!("tap_ensure", tap = name).entered();
        let ifr = ifreq_for(name)?;
        let existed = interface_exists(name)?;
        let file = attach(name, ifr).map_err(|err| match err {
            TapError::Ioctl { source, .. }
                if existed && source.raw_os_error() == Some(libc::EINVAL) =>
            {
                TapError::NotTap {
                    name: name.to_string(),
                }
            }
            TapError::Ioctl { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                TapError::Busy {
                    name: name.to_string(),
                    source,
                }
            }
            other => other,
        })?;
        let guard = Self {
            name: name.to_string(),
            created: !existed,
            file: Some(file),
        };
        if existed {
            tracing::info!(tap = name, "attached to the existing tap");
        } else {
            // From here dropping the guard deletes the tap again if bringing it up fails.
            set_up(name)?;
            tracing::info!(tap = name, "created tap (removed when the VM ends)");
        }
        Ok(guard)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the launcher created the tap (it goes away with the launcher's descriptor).
    pub fn created(&self) -> bool {
        self.created
    }

    /// A second descriptor of the open tap (for the frame relay); `None` once removed.
    pub fn try_clone_file(&self) -> Option<io::Result<File>> {
        self.file.as_ref().map(File::try_clone)
    }

    /// Closes the launcher's descriptor now. A tap the launcher created is deleted by the
    /// kernel once every descriptor (the relay's too) is closed; an existing tap stays.
    pub fn remove(&mut self) {
        if self.file.take().is_some() && self.created {
            tracing::info!(tap = %self.name, "closed the tap the launcher created (the kernel removes it)");
        }
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, TapError> {
    let bytes = name.as_bytes();
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= ifr.ifr_name.len() || bytes.contains(&0) {
        return Err(TapError::BadName {
            name: name.to_string(),
        });
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(ifr)
}

/// Whether an interface `name` exists in the calling thread's network namespace.
pub fn interface_exists(name: &str) -> Result<bool, TapError> {
    let cname = CString::new(name).map_err(|_| TapError::BadName {
        name: name.to_string(),
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string; the call only reads it.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(false),
        _ => Err(TapError::Ioctl {
            name: name.to_string(),
            op: "SIOCGIFINDEX",
            source: err,
        }),
    }
}

/// Opens /dev/net/tun attached to tap `name` (creating a non-persistent tap if missing):
/// plain Ethernet frames, no packet-information or virtio-net header.
fn attach(name: &str, mut ifr: libc::ifreq) -> Result<File, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(|source| TapError::OpenTun {
            name: name.to_string(),
            source,
        })?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is, on a valid fd.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if ret < 0 {
        return Err(TapError::Ioctl {
            name: name.to_string(),
            op: "TUNSETIFF",
            source: io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// Sets the interface administratively up, like `ip link set NAME up`.
fn set_up(name: &str) -> Result<(), TapError> {
    let ioctl_err = |op| TapError::Ioctl {
        name: name.to_string(),
        op,
        source: io::Error::last_os_error(),
    };
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(ioctl_err("socket(AF_INET)"));
    }
    // SAFETY: `fd` is a freshly created socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS fills the flags of the `ifreq` passed by pointer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(ioctl_err("SIOCGIFFLAGS"));
    }
    // SAFETY: the kernel just wrote the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the `ifreq` passed by pointer.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(ioctl_err("SIOCSIFFLAGS"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Taps need root and the tun driver; without them these tests cannot run.
    fn require_taps() {
        ironvisor_prereq::root();
        ironvisor_prereq::path(TUN_PATH, "the tun driver: modprobe tun");
    }

    fn ip(args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// A named network namespace (`ip netns add`), deleted on drop.
    struct Netns(String);

    impl Netns {
        fn create(name: &str) -> Self {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            assert!(
                ip(&["netns", "add", name]),
                "ip netns add {name} failed as root"
            );
            Netns(name.to_string())
        }

        /// Runs `f` on a thread that joined this namespace (setns affects one thread).
        fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let ns = File::open(Path::new("/run/netns").join(&self.0)).unwrap();
            std::thread::spawn(move || {
                // SAFETY: setns on a valid namespace fd; only this thread changes.
                let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = ip(&["netns", "del", &self.0]);
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "a-name-that-is-too-long", "nul\0x"] {
            let err = TapGuard::ensure(name).unwrap_err();
            assert!(matches!(err, TapError::BadName { .. }), "{name:?}: {err}");
        }
    }

    #[test]
    #[ignore = "needs root and /dev/net/tun"]
    fn existing_interface_that_is_not_a_tap_is_refused() {
        require_taps();
        let err = TapGuard::ensure("lo").unwrap_err();
        assert!(matches!(err, TapError::NotTap { .. }), "{err}");
        assert!(err.to_string().contains("lo"));
    }

    #[test]
    #[ignore = "needs root and /dev/net/tun"]
    fn missing_tap_is_created_up_and_removed() {
        require_taps();
        let name = format!("ivq{}", std::process::id() % 100_000);
        let sys = Path::new("/sys/class/net").join(&name);
        let guard = TapGuard::ensure(&name).unwrap();
        assert!(guard.created());
        assert!(sys.join("tun_flags").exists());
        let flags = std::fs::read_to_string(sys.join("flags")).unwrap();
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
        assert_ne!(flags & libc::IFF_UP as u32, 0, "tap is up");
        drop(guard);
        assert!(!sys.exists(), "tap removed on drop");
    }

    #[test]
    #[ignore = "needs root and /dev/net/tun"]
    fn existence_is_judged_in_the_threads_network_namespace() {
        require_taps();
        let pid = std::process::id() % 100_000;
        ironvisor_prereq::tool("ip", "iproute2");
        let ns = Netns::create(&format!("ivq-tap{pid}"));
        let tap = format!("ivn{pid}");
        assert!(ip(&[
            "-n", &ns.0, "tuntap", "add", "dev", &tap, "mode", "tap"
        ]));
        // The host namespace (and its sysfs, which a setns'd thread still sees) has no
        // such interface.
        assert!(!interface_exists(&tap).unwrap());
        assert!(!Path::new("/sys/class/net").join(&tap).exists());

        let name = tap.clone();
        let (created, still_there) = ns.run(move || {
            let mut guard = TapGuard::ensure(&name).unwrap();
            let created = guard.created();
            guard.remove();
            (created, interface_exists(&name).unwrap())
        });
        assert!(
            !created,
            "the tap inside the namespace is used, not created"
        );
        assert!(still_there, "an existing tap is never deleted");
        assert!(
            !interface_exists(&tap).unwrap(),
            "nothing created on the host"
        );

        // A missing tap is created inside the namespace, and gone with its descriptor.
        let name = format!("ivm{pid}");
        let (created, during, after) = ns.run(move || {
            let guard = TapGuard::ensure(&name).unwrap();
            let during = interface_exists(&name).unwrap();
            let created = guard.created();
            drop(guard);
            (created, during, interface_exists(&name).unwrap())
        });
        assert!(created && during && !after, "{created} {during} {after}");

        // And a non-tap interface inside the namespace is refused.
        let err = ns.run(|| TapGuard::ensure("lo").unwrap_err());
        assert!(matches!(err, TapError::NotTap { .. }), "{err}");
    }

    #[test]
    #[ignore = "needs root and /dev/net/tun"]
    fn a_tap_in_use_is_reported_busy() {
        require_taps();
        let name = format!("ivb{}", std::process::id() % 100_000);
        let first = TapGuard::ensure(&name).unwrap();
        let err = TapGuard::ensure(&name).unwrap_err();
        assert!(matches!(err, TapError::Busy { .. }), "{err}");
        drop(first);
    }
}
