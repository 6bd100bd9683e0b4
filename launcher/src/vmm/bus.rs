//! Address-range dispatch of guest port I/O and MMIO accesses to devices.
//!
//! Each device owns a contiguous range; an access is routed to the device whose range
//! contains the address, with the offset inside that range. Accesses that hit no
//! device read as all-ones and ignore writes, like an empty ISA/MMIO slot.

use std::sync::{Arc, Mutex};

/// A device reachable through the bus.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be placed on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} of {name} is empty or wraps around")]
    InvalidRange { name: String, base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} of {name} overlaps {other}")]
    Overlap {
        name: String,
        other: String,
        base: u64,
        len: u64,
    },
}

struct BusEntry {
    base: u64,
    len: u64,
    name: String,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping device ranges, sorted by base address.
#[derive(Default)]
pub struct Bus {
    entries: Vec<BusEntry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::InvalidRange {
                name: name.to_string(),
                base,
                len,
            });
        };
        if let Some(other) = self
            .entries
            .iter()
            .find(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap {
                name: name.to_string(),
                other: other.name.clone(),
                base,
                len,
            });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(
            at,
            BusEntry {
                base,
                len,
                name: name.to_string(),
                device,
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&BusEntry, u64)> {
        let idx = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(idx.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset < entry.len).then_some((entry, offset))
    }

    /// Routes a guest read; returns false (and fills all-ones) when nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((entry, offset)) => {
                lock_device(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a guest write; returns false when nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((entry, offset)) => {
                lock_device(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a panic in one access must not take
/// every later access down with it.
pub fn lock_device<T: ?Sized>(device: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_to_the_device_with_the_offset_inside_its_range() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        bus.insert("a", 0x100, 0x10, a.clone()).unwrap();
        bus.insert("b", 0x3f8, 8, b.clone()).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fb, &mut data));
        assert_eq!(data, [3]);
        assert!(bus.write(0x105, &[7, 8]));
        assert_eq!(a.lock().unwrap().writes, vec![(5, vec![7, 8])]);
        assert!(b.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn unmapped_reads_are_all_ones_and_writes_are_dropped() {
        let mut bus = Bus::new();
        bus.insert("a", 0x100, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x110, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.write(0xff, &[1]));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert("a", 0x100, 0x10, dev.clone()).unwrap();
        assert!(matches!(
            bus.insert("b", 0x10f, 0x10, dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert("c", 0x200, 0, dev.clone()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert("d", u64::MAX, 2, dev),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
