//! Tap devices for `<interface type='ethernet'>` with `managed='no'`: libvirt opens an
//! existing tap by name and never creates or deletes it. Taps normally pre-exist (the
//! node agent creates them); for a tap that does not exist, the launcher creates a
//! persistent one, brings it up, and deletes it again when the VM ends — the same
//! "created if missing, removed on exit" contract as the KVM launcher.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

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
    /// An interface of that name exists but is not a tun/tap device.
    #[error("interface {name} exists but is not a tap device (no tun_flags in sysfs)")]
    NotTap {
        /// The interface name.
        name: String,
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
        /// "TUNSETIFF", "TUNSETPERSIST", "SIOCSIFFLAGS", ...
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A tap the VM uses. If the launcher created it, dropping the guard deletes it.
#[derive(Debug)]
pub struct TapGuard {
    name: String,
    created: bool,
}

impl TapGuard {
    /// Uses the tap `name` if it exists, or creates it (persistent, up) if it does not.
    pub fn ensure(name: &str) -> Result<Self, TapError> {
        Self::ensure_in(Path::new("/sys/class/net"), name)
    }

    fn ensure_in(sysfs_net: &Path, name: &str) -> Result<Self, TapError> {
        let _span = tracing::debug_span!("tap_ensure", tap = name).entered();
        let ifr = ifreq_for(name)?;
        let dir = sysfs_net.join(name);
        if dir.exists() {
            if !dir.join("tun_flags").exists() {
                return Err(TapError::NotTap {
                    name: name.to_string(),
                });
            }
            tracing::debug!("using the existing tap");
            return Ok(Self {
                name: name.to_string(),
                created: false,
            });
        }
        let tun = attach(name, ifr)?;
        set_persist(name, &tun, true)?;
        let guard = Self {
            name: name.to_string(),
            created: true,
        };
        // From here the guard deletes the tap again if bringing it up fails.
        set_up(name)?;
        tracing::info!(tap = name, "created tap (removed when the VM ends)");
        Ok(guard)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the launcher created the tap (and will delete it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Deletes the tap now if the launcher created it; a no-op otherwise.
    pub fn remove(&mut self) -> Result<(), TapError> {
        if !self.created {
            return Ok(());
        }
        self.created = false;
        let tun = attach(&self.name, ifreq_for(&self.name)?)?;
        set_persist(&self.name, &tun, false)?;
        // Closing the last fd of a non-persistent tap deletes the interface.
        drop(tun);
        tracing::info!(tap = %self.name, "removed the tap the launcher created");
        Ok(())
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            tracing::warn!(%err, "tap left behind");
        }
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

/// Opens /dev/net/tun attached to tap `name` (creating a non-persistent tap if missing).
fn attach(name: &str, mut ifr: libc::ifreq) -> Result<File, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(|source| TapError::OpenTun {
            name: name.to_string(),
            source,
        })?;
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
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

fn set_persist(name: &str, tun: &File, persist: bool) -> Result<(), TapError> {
    // SAFETY: TUNSETPERSIST takes its argument by value, on a valid tun fd.
    let ret = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    };
    if ret < 0 {
        return Err(TapError::Ioctl {
            name: name.to_string(),
            op: "TUNSETPERSIST",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
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

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "a-name-that-is-too-long", "nul\0x"] {
            let err = TapGuard::ensure(name).unwrap_err();
            assert!(matches!(err, TapError::BadName { .. }), "{name:?}: {err}");
        }
    }

    #[test]
    fn existing_interface_that_is_not_a_tap_is_refused() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir(sys.path().join("eth9")).unwrap();
        let err = TapGuard::ensure_in(sys.path(), "eth9").unwrap_err();
        assert!(matches!(err, TapError::NotTap { .. }), "{err}");
        assert!(err.to_string().contains("eth9"));
    }

    #[test]
    fn existing_tap_is_used_and_never_deleted() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir(sys.path().join("tapx")).unwrap();
        std::fs::write(sys.path().join("tapx/tun_flags"), "0x1002\n").unwrap();
        let mut guard = TapGuard::ensure_in(sys.path(), "tapx").unwrap();
        assert!(!guard.created());
        assert_eq!(guard.name(), "tapx");
        guard.remove().unwrap();
    }

    #[test]
    fn missing_tap_is_created_up_and_removed() {
        if !is_root() || !Path::new(TUN_PATH).exists() {
            eprintln!("skipped: needs root and {TUN_PATH}");
            return;
        }
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
}
