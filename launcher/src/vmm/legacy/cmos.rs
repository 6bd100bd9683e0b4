//! The CMOS RTC (a Motorola MC146818 as every PC has it): ports 0x70 (register index, bit 7
//! the NMI mask) and 0x71 (data), 128 bytes of registers and battery-backed RAM.
//!
//! The clock is the host's UTC clock plus an offset: the VM's configured offset at start
//! (KubeVirt's `clock.utc.offsetSeconds`, or a time zone's offset), moved when the guest
//! sets the time (`hwclock --systohc`). The guest sets it MC146818-style: with the SET bit
//! of register B held, the time registers it writes are collected and take effect
//! together when SET is cleared, so an intermediate date such as February 31 never
//! exists. Written without SET, each register takes effect at once.
//!
//! Registers B's data mode (BCD or binary) and hour format (24 or 12 hours) are honoured.
//! The device raises no interrupts (the DSDT gives it none): no alarm, periodic or update
//! interrupts, so register C always reads 0 and the update-in-progress bit is never set.

use std::time::{SystemTime, UNIX_EPOCH};

use ironvisor_arch::layout::CMOS_CENTURY_REGISTER;

use super::calendar::DateTime;
use crate::vmm::bus::BusDevice;

/// Port offsets inside the device's range.
const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
/// Number of registers and RAM bytes.
const CMOS_SIZE: usize = 128;
/// Bits of the index port that select a register (bit 7 masks NMIs).
const INDEX_MASK: u8 = 0x7f;

/// Register numbers.
mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const MINUTES: u8 = 0x02;
    pub const HOURS: u8 = 0x04;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0a;
    pub const B: u8 = 0x0b;
    pub const C: u8 = 0x0c;
    pub const D: u8 = 0x0d;
}

/// Register A at power-on: 32.768 kHz time base, 1,024 Hz periodic rate.
const REGISTER_A_DEFAULT: u8 = 0x26;
/// Register A: update in progress (read-only).
const REGISTER_A_UIP: u8 = 0x80;
/// Register B: SET (updates frozen while the guest sets the time).
const REGISTER_B_SET: u8 = 0x80;
/// Register B: data mode binary (clear: BCD).
const REGISTER_B_BINARY: u8 = 0x04;
/// Register B: 24-hour mode (clear: 12-hour with bit 7 of the hour as PM).
const REGISTER_B_24H: u8 = 0x02;
/// Register D: valid RAM and time (the battery is good).
const REGISTER_D_VRT: u8 = 0x80;
/// Hour register bit 7 in 12-hour mode: PM.
const HOUR_PM: u8 = 0x80;

/// Where the device reads the time: seconds since the Unix epoch, UTC.
pub type WallClock = Box<dyn Fn() -> i64 + Send>;

/// The host's UTC clock.
pub fn host_clock() -> WallClock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            })
    })
}

pub struct Cmos {
    index: u8,
    ram: [u8; CMOS_SIZE],
    /// Seconds the guest's clock runs ahead of `clock`.
    offset_seconds: i64,
    clock: WallClock,
    /// While SET is held: the time being written.
    pending: Option<DateTime>,
}

impl Cmos {
    /// An RTC `offset_seconds` ahead of `clock` (negative: behind), in BCD 24-hour mode.
    pub fn new(offset_seconds: i64, clock: WallClock) -> Self {
        let mut ram = [0u8; CMOS_SIZE];
        ram[usize::from(reg::A)] = REGISTER_A_DEFAULT;
        ram[usize::from(reg::B)] = REGISTER_B_24H;
        Self {
            index: 0,
            ram,
            offset_seconds,
            clock,
            pending: None,
        }
    }

    /// Seconds the guest's clock currently runs ahead of the host's.
    pub fn offset_seconds(&self) -> i64 {
        self.offset_seconds
    }

    fn register_b(&self) -> u8 {
        self.ram[usize::from(reg::B)]
    }

    /// The time the guest sees now: the one being set while SET is held.
    fn guest_time(&self) -> DateTime {
        self.pending.unwrap_or_else(|| {
            DateTime::from_unix((self.clock)().saturating_add(self.offset_seconds))
        })
    }

    fn encode(&self, value: u32) -> u8 {
        let value = u8::try_from(value % 100).unwrap_or(0);
        if self.register_b() & REGISTER_B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u32 {
        if self.register_b() & REGISTER_B_BINARY != 0 {
            u32::from(value)
        } else {
            u32::from(value >> 4) * 10 + u32::from(value & 0xf)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.register_b() & REGISTER_B_24H != 0 {
            return self.encode(hour);
        }
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        self.encode(twelve) | pm
    }

    fn decode_hour(&self, value: u8) -> u32 {
        if self.register_b() & REGISTER_B_24H != 0 {
            return self.decode(value);
        }
        let twelve = self.decode(value & !HOUR_PM) % 12;
        if value & HOUR_PM != 0 {
            twelve + 12
        } else {
            twelve
        }
    }

    fn read_register(&self, index: u8) -> u8 {
        let now = self.guest_time();
        let year = u32::try_from(now.year.rem_euclid(10_000)).unwrap_or(0);
        match index {
            reg::SECONDS => self.encode(now.second),
            reg::MINUTES => self.encode(now.minute),
            reg::HOURS => self.encode_hour(now.hour),
            reg::WEEKDAY => self.encode(now.weekday()),
            reg::DAY => self.encode(now.day),
            reg::MONTH => self.encode(now.month),
            reg::YEAR => self.encode(year % 100),
            CMOS_CENTURY_REGISTER => self.encode(year / 100),
            reg::A => self.ram[usize::from(reg::A)] & !REGISTER_A_UIP,
            reg::C => 0,
            reg::D => REGISTER_D_VRT,
            other => self.ram[usize::from(other)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY
            | reg::MONTH
            | reg::YEAR
            | CMOS_CENTURY_REGISTER => {
                let mut time = self.guest_time();
                self.set_field(&mut time, index, value);
                if self.pending.is_some() {
                    self.pending = Some(time);
                } else {
                    self.set_time(time);
                }
            }
            // The guest cannot choose the weekday: it follows from the date.
            reg::WEEKDAY | reg::C | reg::D => {}
            reg::B => {
                let was_setting = self.register_b() & REGISTER_B_SET != 0;
                let setting = value & REGISTER_B_SET != 0;
                if setting && !was_setting {
                    self.pending = Some(self.guest_time());
                }
                self.ram[usize::from(reg::B)] = value;
                if was_setting && !setting {
                    if let Some(time) = self.pending.take() {
                        self.set_time(time);
                    }
                }
            }
            reg::A => self.ram[usize::from(reg::A)] = value & !REGISTER_A_UIP,
            other => self.ram[usize::from(other)] = value,
        }
    }

    fn set_field(&self, time: &mut DateTime, index: u8, value: u8) {
        match index {
            reg::SECONDS => time.second = self.decode(value),
            reg::MINUTES => time.minute = self.decode(value),
            reg::HOURS => time.hour = self.decode_hour(value),
            reg::DAY => time.day = self.decode(value),
            reg::MONTH => time.month = self.decode(value),
            reg::YEAR => {
                let century = time.year.div_euclid(100);
                time.year = century * 100 + i64::from(self.decode(value));
            }
            CMOS_CENTURY_REGISTER => {
                let year_of_century = time.year.rem_euclid(100);
                time.year = i64::from(self.decode(value)) * 100 + year_of_century;
            }
            _ => {}
        }
    }

    fn set_time(&mut self, time: DateTime) {
        let offset = time.to_unix().saturating_sub((self.clock)());
        tracing::info!(
            previous_offset_seconds = self.offset_seconds,
            offset_seconds = offset,
            "guest set its real-time clock"
        );
        self.offset_seconds = offset;
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            INDEX_OFFSET => self.index,
            DATA_OFFSET => self.read_register(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            INDEX_OFFSET => self.index = value & INDEX_MASK,
            DATA_OFFSET => self.write_register(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// 2026-12-04T23:59:58Z, a Friday.
    const NOW: i64 = 1_796_428_798;

    fn cmos_at(offset: i64) -> (Cmos, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(NOW));
        let clock = now.clone();
        let cmos = Cmos::new(offset, Box::new(move || clock.load(Ordering::SeqCst)));
        (cmos, now)
    }

    fn read(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(INDEX_OFFSET, &[index | 0x80]);
        let mut value = [0u8];
        cmos.read(DATA_OFFSET, &mut value);
        value[0]
    }

    fn write(cmos: &mut Cmos, index: u8, value: u8) {
        cmos.write(INDEX_OFFSET, &[index]);
        cmos.write(DATA_OFFSET, &[value]);
    }

    fn time_of(cmos: &mut Cmos) -> [u8; 8] {
        [
            reg::SECONDS,
            reg::MINUTES,
            reg::HOURS,
            reg::WEEKDAY,
            reg::DAY,
            reg::MONTH,
            reg::YEAR,
            CMOS_CENTURY_REGISTER,
        ]
        .map(|index| read(cmos, index))
    }

    #[test]
    fn reads_the_host_utc_time_in_bcd_24_hour_mode() {
        let (mut cmos, _) = cmos_at(0);
        assert_eq!(
            time_of(&mut cmos),
            [0x58, 0x59, 0x23, 0x06, 0x04, 0x12, 0x26, 0x20]
        );
        assert_eq!(read(&mut cmos, reg::B), REGISTER_B_24H);
        assert_eq!(read(&mut cmos, reg::D), REGISTER_D_VRT, "valid time");
        assert_eq!(read(&mut cmos, reg::C), 0, "no interrupt flags");
        assert_eq!(read(&mut cmos, reg::A) & REGISTER_A_UIP, 0);
    }

    #[test]
    fn the_offset_moves_the_clock_across_midnight() {
        // UTC+5:30 (Asia/Kolkata): 05:29:58 on Saturday the 5th.
        let (mut cmos, now) = cmos_at(19_800);
        assert_eq!(
            time_of(&mut cmos),
            [0x58, 0x29, 0x05, 0x07, 0x05, 0x12, 0x26, 0x20]
        );
        now.fetch_add(3, Ordering::SeqCst);
        assert_eq!(read(&mut cmos, reg::SECONDS), 0x01, "the clock runs");
        let (mut behind, _) = cmos_at(-86_400 * 365);
        assert_eq!(read(&mut behind, reg::YEAR), 0x25);
    }

    #[test]
    fn binary_and_12_hour_modes_are_honoured() {
        let (mut cmos, _) = cmos_at(0);
        write(&mut cmos, reg::B, REGISTER_B_BINARY);
        assert_eq!(read(&mut cmos, reg::SECONDS), 58);
        assert_eq!(read(&mut cmos, reg::HOURS), 11 | HOUR_PM, "11 PM");
        assert_eq!(read(&mut cmos, reg::YEAR), 26);
        let (mut morning, _) = cmos_at(-23 * 3600);
        write(&mut morning, reg::B, 0);
        assert_eq!(read(&mut morning, reg::HOURS), 0x12, "12 AM in BCD");
    }

    #[test]
    fn setting_the_time_under_set_takes_effect_when_set_is_cleared() {
        let (mut cmos, now) = cmos_at(0);
        // 2027-02-28 10:20:30, written year first as Linux does: nothing is taken until
        // SET is cleared, so no half-written date is ever normalized.
        write(&mut cmos, reg::B, REGISTER_B_24H | REGISTER_B_SET);
        write(&mut cmos, reg::YEAR, 0x27);
        write(&mut cmos, reg::MONTH, 0x02);
        write(&mut cmos, reg::DAY, 0x28);
        write(&mut cmos, reg::HOURS, 0x10);
        write(&mut cmos, reg::MINUTES, 0x20);
        write(&mut cmos, reg::SECONDS, 0x30);
        assert_eq!(cmos.offset_seconds(), 0, "nothing takes effect under SET");
        assert_eq!(
            read(&mut cmos, reg::DAY),
            0x28,
            "reads show the time being set"
        );
        write(&mut cmos, reg::B, REGISTER_B_24H);
        let target = DateTime {
            year: 2027,
            month: 2,
            day: 28,
            hour: 10,
            minute: 20,
            second: 30,
        };
        assert_eq!(cmos.offset_seconds(), target.to_unix() - NOW);
        now.fetch_add(30, Ordering::SeqCst);
        assert_eq!(
            time_of(&mut cmos),
            [0x00, 0x21, 0x10, 0x01, 0x28, 0x02, 0x27, 0x20],
            "a Sunday, 30 s later"
        );
    }

    #[test]
    fn a_write_without_set_takes_effect_at_once() {
        let (mut cmos, _) = cmos_at(0);
        write(&mut cmos, reg::HOURS, 0x22);
        assert_eq!(cmos.offset_seconds(), -3600);
        write(&mut cmos, reg::WEEKDAY, 0x01);
        assert_eq!(
            read(&mut cmos, reg::WEEKDAY),
            0x06,
            "weekday follows the date"
        );
    }

    #[test]
    fn ram_bytes_keep_what_the_guest_writes() {
        let (mut cmos, _) = cmos_at(0);
        write(&mut cmos, 0x40, 0xa5);
        write(&mut cmos, 0x7f, 0x5a);
        assert_eq!(read(&mut cmos, 0x40), 0xa5);
        assert_eq!(read(&mut cmos, 0x7f), 0x5a);
        // Index bit 7 is the NMI mask, not part of the register number.
        cmos.write(INDEX_OFFSET, &[0x80 | 0x40]);
        let mut value = [0u8];
        cmos.read(DATA_OFFSET, &mut value);
        assert_eq!(value[0], 0xa5);
    }
}
