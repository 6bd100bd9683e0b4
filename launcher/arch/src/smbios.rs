//! SMBIOS tables: the system identity a guest reads from firmware (`dmidecode`,
//! `/sys/class/dmi/id/*`).
//!
//! A guest booted without EFI finds SMBIOS by scanning `0xF0000..0x100000` on 16-byte
//! boundaries for an entry point. The launcher writes an SMBIOS 3.0 (64-bit, `_SM3_`)
//! entry point at [`SMBIOS_START`] and the structure table right after it at
//! [`SMBIOS_TABLES_START`], below the end of the BIOS area ([`SMBIOS_END`]); the ACPI
//! tables end where this area starts. Linux looks for the 64-bit entry point first
//! (since 3.19); no 2.x (`_SM_`) entry point is written.
//!
//! The table holds three structures:
//! - type 0, BIOS information: vendor [`BIOS_VENDOR`], version [`BIOS_VERSION`], release
//!   date [`BIOS_RELEASE_DATE`], "BIOS characteristics not supported", "system is a
//!   virtual machine";
//! - type 1, system information: manufacturer [`SYSTEM_MANUFACTURER`], product name
//!   [`SYSTEM_PRODUCT_NAME`], version [`SYSTEM_VERSION`], the serial number and UUID of
//!   the [`SmbiosIdentity`];
//! - type 127, end of table.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{ACPI_TABLES_END, SMBIOS_END, SMBIOS_START, SMBIOS_TABLES_START};

// The layout: the ACPI tables end before the SMBIOS area, the entry point is on a
// 16-byte boundary in the range Linux scans, and the table follows the entry point.
const _: () = assert!(ACPI_TABLES_END <= SMBIOS_START);
const _: () = assert!(SMBIOS_START >= 0xf0000 && SMBIOS_START.is_multiple_of(16));
const _: () = assert!(SMBIOS_TABLES_START >= SMBIOS_START + ENTRY_POINT_LENGTH as u64);
const _: () = assert!(SMBIOS_TABLES_START < SMBIOS_END && SMBIOS_END <= 0x100000);

/// Anchor of the SMBIOS 3.0 (64-bit) entry point.
pub const ENTRY_POINT_ANCHOR: [u8; 5] = *b"_SM3_";
/// Length of the SMBIOS 3.0 entry point structure.
pub const ENTRY_POINT_LENGTH: u8 = 24;
/// SMBIOS version the tables follow: major, minor, document revision. 2.6 and later
/// store the UUID's first three fields little-endian.
pub const SMBIOS_VERSION: (u8, u8, u8) = (3, 0, 0);
/// Entry point revision 1: the 3.0 entry point layout.
const ENTRY_POINT_REVISION: u8 = 1;

/// BIOS information (type 0) vendor.
pub const BIOS_VENDOR: &str = "Ironvisor";
/// BIOS information (type 0) version: the launcher's version.
pub const BIOS_VERSION: &str = env!("CARGO_PKG_VERSION");
/// BIOS information (type 0) release date (`mm/dd/yyyy`): when these tables were
/// introduced. Change it when their content changes.
pub const BIOS_RELEASE_DATE: &str = "12/04/2026";
/// System information (type 1) manufacturer (Linux: `sys_vendor`).
pub const SYSTEM_MANUFACTURER: &str = "Ironvisor";
/// System information (type 1) product name (Linux: `product_name`).
pub const SYSTEM_PRODUCT_NAME: &str = "Ironvisor microVM";
/// System information (type 1) version (Linux: `product_version`): the launcher's version.
pub const SYSTEM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest system serial number accepted, in bytes.
pub const MAX_SERIAL_BYTES: usize = 64;
/// Length of a UUID in its RFC 4122 text form.
pub const UUID_TEXT_LEN: usize = 36;
/// Where the dashes of a UUID's text form are.
const UUID_DASH_POSITIONS: [usize; 4] = [8, 13, 18, 23];

/// Structure types written.
const TYPE_BIOS_INFORMATION: u8 = 0;
const TYPE_SYSTEM_INFORMATION: u8 = 1;
const TYPE_END_OF_TABLE: u8 = 127;
/// Length of a structure header: type, length, handle.
const STRUCTURE_HEADER_LEN: usize = 4;
/// Type 0 BIOS characteristics, bit 3: "BIOS characteristics are not supported".
const BIOS_CHARACTERISTICS_NOT_SUPPORTED: u64 = 1 << 3;
/// Type 0 BIOS characteristics extension byte 2, bit 4: "SMBIOS table describes a
/// virtual machine".
const BIOS_EXTENSION_2_VIRTUAL_MACHINE: u8 = 1 << 4;
/// Type 0 release and embedded controller fields: "not supported".
const RELEASE_NOT_SUPPORTED: u8 = 0xff;
/// Type 1 wake-up type: power switch.
const WAKE_UP_POWER_SWITCH: u8 = 0x06;

/// The system identity written into the system information (type 1) structure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmbiosIdentity<'a> {
    /// System UUID, in RFC 4122 byte order (the order of its text form; see
    /// [`parse_uuid`]). `None` writes all zeros, which SMBIOS defines as "no UUID present
    /// in the system": Linux then has no `product_uuid` and `dmidecode` prints
    /// "Not Settable".
    pub uuid: Option<[u8; 16]>,
    /// System serial number: printable ASCII, at most [`MAX_SERIAL_BYTES`] bytes. `None`
    /// or empty writes no string ("Not Specified", an empty `product_serial`).
    pub serial: Option<&'a str>,
}

/// Errors from checking the identity or writing the SMBIOS tables.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    /// The text is not a UUID in its RFC 4122 form.
    #[error("{value:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx): {reason}")]
    Uuid {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The serial number cannot be an SMBIOS string.
    #[error("serial number {value:?} {reason}")]
    Serial {
        /// The serial number given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The structure table does not fit in the SMBIOS area.
    #[error("the SMBIOS tables end at {end:#x}, past the end of their area at {limit:#x}")]
    TablesTooLarge {
        /// Where they would end.
        end: u64,
        /// Where the area ends.
        limit: u64,
    },
    /// Writing to guest memory failed.
    #[error("writing the SMBIOS {what} at guest address {addr:#x}: {source}")]
    Write {
        /// "entry point" or "structure table".
        what: &'static str,
        /// Where it was being written.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Parses a UUID written in its RFC 4122 text form
/// (`6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab`, either case) into its 16 bytes, in text order.
/// The nil UUID and the all-`f` UUID are refused: SMBIOS reserves them for "no UUID" and
/// "UUID not set", and a guest would not see them.
pub fn parse_uuid(text: &str) -> Result<[u8; 16], SmbiosError> {
    let bad = |reason: String| SmbiosError::Uuid {
        value: text.to_string(),
        reason,
    };
    if text.len() != UUID_TEXT_LEN {
        return Err(bad(format!(
            "it is {} bytes long, a UUID has {UUID_TEXT_LEN}",
            text.len()
        )));
    }
    let mut digits = Vec::with_capacity(32);
    // Every accepted character is ASCII, so up to the first refused one the character
    // number is also the byte position.
    for (position, c) in text.chars().enumerate() {
        if UUID_DASH_POSITIONS.contains(&position) {
            if c != '-' {
                return Err(bad(format!(
                    "character {} is {c:?}, expected '-'",
                    position + 1
                )));
            }
            continue;
        }
        match c.to_digit(16) {
            // A hex digit is below 16, so it fits a byte.
            Some(value) => digits.push(value as u8),
            None => {
                return Err(bad(format!(
                    "character {} is {c:?}, expected a hex digit",
                    position + 1
                )))
            }
        }
    }
    let mut uuid = [0u8; 16];
    for (byte, pair) in uuid.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (pair[0] << 4) | pair[1];
    }
    if uuid.iter().all(|b| *b == 0) {
        return Err(bad(
            "it is the nil UUID, which SMBIOS reserves for a system without a UUID".into(),
        ));
    }
    if uuid.iter().all(|b| *b == 0xff) {
        return Err(bad(
            "it is all ones, which SMBIOS reserves for a UUID that is not set".into(),
        ));
    }
    Ok(uuid)
}

/// Checks that `serial` can be the system serial number: printable ASCII (space to
/// `~`), at most [`MAX_SERIAL_BYTES`] bytes.
pub fn check_serial(serial: &str) -> Result<(), SmbiosError> {
    let bad = |reason: String| SmbiosError::Serial {
        value: serial.to_string(),
        reason,
    };
    if serial.len() > MAX_SERIAL_BYTES {
        return Err(bad(format!(
            "is {} bytes long; at most {MAX_SERIAL_BYTES} are allowed",
            serial.len()
        )));
    }
    if let Some(c) = serial.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(bad(format!(
            "contains {c:?}; only printable ASCII (space to '~') is allowed"
        )));
    }
    Ok(())
}

/// The UUID bytes as SMBIOS 2.6+ stores them: the first three fields (`time_low`,
/// `time_mid`, `time_hi_and_version`) little-endian, the last eight bytes as they are.
pub fn uuid_to_smbios_bytes(uuid: &[u8; 16]) -> [u8; 16] {
    let mut bytes = *uuid;
    bytes[0..4].reverse();
    bytes[4..6].reverse();
    bytes[6..8].reverse();
    bytes
}

/// Writes the SMBIOS entry point and structure table for `identity` to guest memory and
/// returns the entry point's address ([`SMBIOS_START`]).
pub fn create_smbios_tables<M: GuestMemoryBackend>(
    mem: &M,
    identity: &SmbiosIdentity<'_>,
) -> Result<GuestAddress, SmbiosError> {
    let _span = tracing::info_span!(
        "create_smbios_tables",
        uuid = identity.uuid.is_some(),
        serial = identity.serial.is_some()
    )
    .entered();
    if let Some(serial) = identity.serial {
        check_serial(serial)?;
    }
    let table = structure_table(identity);
    let end = SMBIOS_TABLES_START + table.len() as u64;
    if end > SMBIOS_END {
        return Err(SmbiosError::TablesTooLarge {
            end,
            limit: SMBIOS_END,
        });
    }
    let table_len = u32::try_from(table.len()).map_err(|_| SmbiosError::TablesTooLarge {
        end,
        limit: SMBIOS_END,
    })?;
    write(mem, "structure table", SMBIOS_TABLES_START, &table)?;
    let entry_point = entry_point(table_len, SMBIOS_TABLES_START);
    write(mem, "entry point", SMBIOS_START, &entry_point)?;
    tracing::debug!(
        entry_point = format_args!("{SMBIOS_START:#x}"),
        table = format_args!("{SMBIOS_TABLES_START:#x}"),
        table_len,
        "SMBIOS tables written"
    );
    Ok(GuestAddress(SMBIOS_START))
}

fn write<M: GuestMemoryBackend>(
    mem: &M,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), SmbiosError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| SmbiosError::Write { what, addr, source })
}

/// The 24-byte SMBIOS 3.0 entry point for a table of `table_len` bytes at `table_addr`.
fn entry_point(table_len: u32, table_addr: u64) -> [u8; ENTRY_POINT_LENGTH as usize] {
    let (major, minor, docrev) = SMBIOS_VERSION;
    let mut entry = [0u8; ENTRY_POINT_LENGTH as usize];
    entry[0..5].copy_from_slice(&ENTRY_POINT_ANCHOR);
    // entry[5] is the checksum, set last.
    entry[6] = ENTRY_POINT_LENGTH;
    entry[7] = major;
    entry[8] = minor;
    entry[9] = docrev;
    entry[10] = ENTRY_POINT_REVISION;
    // entry[11] is reserved.
    entry[12..16].copy_from_slice(&table_len.to_le_bytes());
    entry[16..24].copy_from_slice(&table_addr.to_le_bytes());
    entry[5] = checksum(&entry);
    entry
}

/// The byte that makes `bytes` (with that byte still zero) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// The structures: BIOS information, system information, end of table.
fn structure_table(identity: &SmbiosIdentity<'_>) -> Vec<u8> {
    let mut table = Vec::new();
    bios_information(&mut table, 0);
    system_information(&mut table, 1, identity);
    structure(&mut table, TYPE_END_OF_TABLE, 2, &[], StringSet::default());
    table
}

/// Type 0, in its SMBIOS 2.4+ length (0x18 bytes).
fn bios_information(table: &mut Vec<u8>, handle: u16) {
    let mut strings = StringSet::default();
    let mut fields = Vec::with_capacity(20);
    fields.push(strings.add(BIOS_VENDOR));
    fields.push(strings.add(BIOS_VERSION));
    // BIOS starting address segment: none (no legacy BIOS image in memory).
    fields.extend_from_slice(&0u16.to_le_bytes());
    fields.push(strings.add(BIOS_RELEASE_DATE));
    // BIOS ROM size: 64 KiB × (n + 1).
    fields.push(0);
    fields.extend_from_slice(&BIOS_CHARACTERISTICS_NOT_SUPPORTED.to_le_bytes());
    fields.push(0);
    fields.push(BIOS_EXTENSION_2_VIRTUAL_MACHINE);
    // System BIOS major and minor release, embedded controller major and minor release.
    fields.extend_from_slice(&[RELEASE_NOT_SUPPORTED; 4]);
    structure(table, TYPE_BIOS_INFORMATION, handle, &fields, strings);
}

/// Type 1, in its SMBIOS 2.4+ length (0x1b bytes).
fn system_information(table: &mut Vec<u8>, handle: u16, identity: &SmbiosIdentity<'_>) {
    let mut strings = StringSet::default();
    let mut fields = Vec::with_capacity(23);
    fields.push(strings.add(SYSTEM_MANUFACTURER));
    fields.push(strings.add(SYSTEM_PRODUCT_NAME));
    fields.push(strings.add(SYSTEM_VERSION));
    fields.push(strings.add(identity.serial.unwrap_or("")));
    let uuid = identity
        .uuid
        .map_or([0u8; 16], |u| uuid_to_smbios_bytes(&u));
    fields.extend_from_slice(&uuid);
    fields.push(WAKE_UP_POWER_SWITCH);
    // SKU number and family: no string.
    fields.extend_from_slice(&[0, 0]);
    structure(table, TYPE_SYSTEM_INFORMATION, handle, &fields, strings);
}

/// Appends one structure: header, formatted `fields`, then its string set.
fn structure(table: &mut Vec<u8>, kind: u8, handle: u16, fields: &[u8], strings: StringSet) {
    // The formatted areas written here are at most a few dozen bytes.
    let length = u8::try_from(STRUCTURE_HEADER_LEN + fields.len()).unwrap_or(u8::MAX);
    table.push(kind);
    table.push(length);
    table.extend_from_slice(&handle.to_le_bytes());
    table.extend_from_slice(fields);
    table.extend_from_slice(&strings.finish());
}

/// The strings of one structure, numbered from 1 in the order they are added.
#[derive(Default)]
struct StringSet {
    bytes: Vec<u8>,
    count: u8,
}

impl StringSet {
    /// Adds `text` and returns its number, or 0 ("no string") when it is empty.
    /// Callers pass constants or checked serials: printable ASCII, no NUL.
    fn add(&mut self, text: &str) -> u8 {
        if text.is_empty() {
            return 0;
        }
        self.bytes.extend_from_slice(text.as_bytes());
        self.bytes.push(0);
        self.count += 1;
        self.count
    }

    /// The string set as it follows the formatted area: each string NUL-terminated and
    /// one more NUL; two NULs when there are no strings.
    fn finish(mut self) -> Vec<u8> {
        if self.bytes.is_empty() {
            self.bytes.push(0);
        }
        self.bytes.push(0);
        self.bytes
    }
}

#[cfg(test)]
mod tests;
