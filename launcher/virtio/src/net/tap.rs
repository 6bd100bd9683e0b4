//! A tap device opened through /dev/net/tun with a 12-byte virtio-net header on every frame.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetError, VNET_HDR_LEN};

const TUN_PATH: &str = "/dev/net/tun";

#[cfg(feature = "fuzzing")]
mod fuzzing;

/// An open tap queue. If the interface did not exist, the kernel created a non-persistent
/// one that disappears when this is dropped.
#[derive(Debug)]
pub(crate) struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating if needed) the tap `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
    /// a 12-byte vnet header and non-blocking I/O.
    pub(crate) fn open(name: &str) -> Result<Self, NetError> {
        let mut ifr = ifreq_for(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| NetError::OpenTun { source })?;
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is, on a valid fd.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(NetError::CreateTap {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let name = name_from_ifreq(&ifr);
        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `c_int` through the pointer, on a valid fd.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) };
        if ret < 0 {
            return Err(NetError::VnetHeaderSize {
                name,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self { file, name })
    }

    /// Interface name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (vnet header included); `WouldBlock` when none is queued.
    pub(crate) fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (vnet header included).
    pub(crate) fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// Sets the interface administratively up (`IFF_UP`), like `ip link set NAME up`.
    pub(crate) fn set_up(&self) -> Result<(), NetError> {
        let link_error = |source| NetError::LinkUp {
            name: self.name.clone(),
            source,
        };
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(link_error(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created socket nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ifr = ifreq_for(&self.name)?;
        // SAFETY: SIOCGIFFLAGS fills the flags of the `ifreq` passed by pointer.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
            return Err(link_error(io::Error::last_os_error()));
        }
        // SAFETY: the kernel just filled `ifru_flags`, the active union member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads the `ifreq` passed by pointer.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
            return Err(link_error(io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Validates `name` as an interface name and builds an `ifreq` carrying it.
fn ifreq_for(name: &str) -> Result<libc::ifreq, NetError> {
    let invalid = |reason| NetError::InvalidTapName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(invalid("it is longer than 15 bytes"));
    }
    if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(invalid("it contains NUL, '/' or whitespace"));
    }
    // SAFETY: `ifreq` is a C struct of integers, arrays and a union of such; all-zero bytes
    // are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

fn name_from_ifreq(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_validated() {
        assert!(ifreq_for("tap0").is_ok());
        assert!(ifreq_for("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a\0b"] {
            assert!(
                matches!(ifreq_for(bad), Err(NetError::InvalidTapName { .. })),
                "{bad:?} accepted"
            );
        }
        let ifr = ifreq_for("vmtap7").expect("ifreq");
        assert_eq!(name_from_ifreq(&ifr), "vmtap7");
    }
}
