//! Unit tests of the SMBIOS tables: found the way Linux scans for them, parsed back from
//! guest memory, and (with dmidecode installed) decoded by dmidecode.

use super::*;
use crate::acpi::{create_acpi_tables, MmioDeviceInfo, MAX_ACPI_VCPUS};
use crate::layout::{IOAPIC_PINS, VIRTIO_FIRST_GSI, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::memory::create_guest_memory;
use crate::topology::CpuTopology;
use vm_memory::GuestMemoryMmap;

const KNOWN_UUID: &str = "6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab";
/// [`KNOWN_UUID`] as SMBIOS stores it: the first three fields byte-swapped.
const KNOWN_UUID_SMBIOS_BYTES: [u8; 16] = [
    0x1e, 0x7d, 0x1c, 0x6a, 0x3f, 0x8b, 0x5a, 0x4c, 0x9e, 0x2d, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
];
/// Where Linux scans for an entry point without EFI, and the step it scans in.
const SCAN_START: u64 = 0xf0000;
const SCAN_END: u64 = 0x100000;
const SCAN_STEP: u64 = 16;

fn memory() -> GuestMemoryMmap<()> {
    create_guest_memory(64 << 20).unwrap()
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// One structure read back from the table.
#[derive(Debug)]
struct Structure {
    kind: u8,
    handle: u16,
    /// The formatted area, header included (offsets as in the specification).
    formatted: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    /// The string a formatted-area field at `offset` refers to ("" for string 0).
    fn string_at(&self, offset: usize) -> &str {
        match self.formatted[offset] {
            0 => "",
            index => &self.strings[usize::from(index) - 1],
        }
    }
}

/// The parsed entry point and structure table.
struct Tables {
    entry_point: Vec<u8>,
    table_addr: u64,
    table_len: usize,
    structures: Vec<Structure>,
}

/// Scans the BIOS area like Linux does (16-byte steps, `_SM3_`, length, checksum), then
/// walks the structure table up to the end-of-table structure, checking that it ends
/// exactly at the length the entry point gives.
fn find_and_parse(mem: &GuestMemoryMmap<()>) -> Tables {
    let mut found = Vec::new();
    for addr in (SCAN_START..SCAN_END).step_by(SCAN_STEP as usize) {
        let mut anchor = [0u8; 5];
        mem.read_slice(&mut anchor, GuestAddress(addr)).unwrap();
        if anchor == ENTRY_POINT_ANCHOR {
            found.push(addr);
        }
    }
    assert_eq!(found, [SMBIOS_START], "one entry point, at SMBIOS_START");
    let mut entry_point = vec![0u8; usize::from(ENTRY_POINT_LENGTH)];
    mem.read_slice(&mut entry_point, GuestAddress(SMBIOS_START))
        .unwrap();
    assert_eq!(entry_point[6], ENTRY_POINT_LENGTH, "entry point length");
    assert_eq!(sum(&entry_point), 0, "entry point checksum");
    assert_eq!(
        (entry_point[7], entry_point[8], entry_point[9]),
        SMBIOS_VERSION
    );
    assert_eq!(entry_point[10], 1, "entry point revision");
    let table_len = u32::from_le_bytes(entry_point[12..16].try_into().unwrap()) as usize;
    let table_addr = u64::from_le_bytes(entry_point[16..24].try_into().unwrap());
    assert_eq!(table_addr, SMBIOS_TABLES_START);
    assert!(table_addr >= SMBIOS_START + u64::from(ENTRY_POINT_LENGTH));
    assert!(table_addr + table_len as u64 <= SMBIOS_END);

    let mut table = vec![0u8; table_len];
    mem.read_slice(&mut table, GuestAddress(table_addr))
        .unwrap();
    let mut structures = Vec::new();
    let mut offset = 0;
    loop {
        assert!(offset + 4 <= table.len(), "structure header past the table");
        let kind = table[offset];
        let length = usize::from(table[offset + 1]);
        let handle = u16::from_le_bytes([table[offset + 2], table[offset + 3]]);
        assert!(length >= 4);
        let formatted = table[offset..offset + length].to_vec();
        // Strings: NUL-terminated, the set ends with an extra NUL (two NULs if empty).
        let mut cursor = offset + length;
        let mut strings = Vec::new();
        if table[cursor] == 0 {
            assert_eq!(table[cursor + 1], 0, "empty string set is two NULs");
            cursor += 2;
        } else {
            while table[cursor] != 0 {
                let end = cursor + table[cursor..].iter().position(|b| *b == 0).unwrap();
                strings.push(String::from_utf8(table[cursor..end].to_vec()).unwrap());
                cursor = end + 1;
            }
            cursor += 1;
        }
        structures.push(Structure {
            kind,
            handle,
            formatted,
            strings,
        });
        offset = cursor;
        if kind == TYPE_END_OF_TABLE {
            break;
        }
    }
    assert_eq!(
        offset, table_len,
        "the table ends with the end-of-table structure"
    );
    Tables {
        entry_point,
        table_addr,
        table_len,
        structures,
    }
}

fn single(tables: &Tables, kind: u8) -> &Structure {
    let mut matching = tables.structures.iter().filter(|s| s.kind == kind);
    let found = matching.next().unwrap_or_else(|| panic!("no type {kind}"));
    assert!(matching.next().is_none(), "more than one type {kind}");
    found
}

/// Formats SMBIOS UUID bytes as Linux and dmidecode do for SMBIOS 2.6 and later.
fn format_smbios_uuid(bytes: &[u8]) -> String {
    let b = bytes;
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

#[test]
fn entry_point_is_where_linux_scans_and_points_at_the_whole_table() {
    let mem = memory();
    let addr = create_smbios_tables(&mem, &SmbiosIdentity::default()).unwrap();
    assert_eq!(addr, GuestAddress(SMBIOS_START));
    assert_eq!(SMBIOS_START % SCAN_STEP, 0);
    let tables = find_and_parse(&mem);
    assert_eq!(&tables.entry_point[..5], b"_SM3_");
    let kinds: Vec<u8> = tables.structures.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [0, 1, 127]);
    let mut handles: Vec<u16> = tables.structures.iter().map(|s| s.handle).collect();
    handles.sort_unstable();
    handles.dedup();
    assert_eq!(handles.len(), 3, "handles are unique");
    assert!(tables.table_addr + tables.table_len as u64 <= SMBIOS_END);
}

#[test]
fn system_information_carries_the_serial_and_the_uuid_little_endian() {
    let mem = memory();
    let uuid = parse_uuid(KNOWN_UUID).unwrap();
    let identity = SmbiosIdentity {
        uuid: Some(uuid),
        serial: Some("SN-0042 (rack 7)"),
    };
    create_smbios_tables(&mem, &identity).unwrap();
    let tables = find_and_parse(&mem);
    let system = single(&tables, 1);
    assert_eq!(system.formatted[1], 0x1b, "type 1 length (SMBIOS 2.4+)");
    assert_eq!(system.string_at(0x04), SYSTEM_MANUFACTURER);
    assert_eq!(system.string_at(0x05), "Ironvisor microVM");
    assert_eq!(system.string_at(0x06), SYSTEM_VERSION);
    assert_eq!(system.string_at(0x07), "SN-0042 (rack 7)");
    assert_eq!(&system.formatted[0x08..0x18], &KNOWN_UUID_SMBIOS_BYTES);
    assert_eq!(
        format_smbios_uuid(&system.formatted[0x08..0x18]),
        KNOWN_UUID
    );
    assert_eq!(system.formatted[0x18], WAKE_UP_POWER_SWITCH);
    assert_eq!(system.string_at(0x19), "", "no SKU number");
    assert_eq!(system.string_at(0x1a), "", "no family");
}

#[test]
fn without_an_identity_the_manufacturer_is_still_there_and_the_uuid_is_zero() {
    let mem = memory();
    create_smbios_tables(&mem, &SmbiosIdentity::default()).unwrap();
    let tables = find_and_parse(&mem);
    let system = single(&tables, 1);
    assert_eq!(system.string_at(0x04), "Ironvisor");
    assert_eq!(system.string_at(0x05), SYSTEM_PRODUCT_NAME);
    assert_eq!(system.formatted[0x07], 0, "serial: no string");
    assert_eq!(&system.formatted[0x08..0x18], &[0u8; 16]);
    assert_eq!(system.strings.len(), 3);

    // An empty serial is the same as none.
    let empty = SmbiosIdentity {
        serial: Some(""),
        ..SmbiosIdentity::default()
    };
    create_smbios_tables(&mem, &empty).unwrap();
    assert_eq!(single(&find_and_parse(&mem), 1).formatted[0x07], 0);
}

#[test]
fn bios_information_names_the_vendor_and_a_virtual_machine() {
    let mem = memory();
    create_smbios_tables(&mem, &SmbiosIdentity::default()).unwrap();
    let tables = find_and_parse(&mem);
    let bios = single(&tables, 0);
    assert_eq!(bios.formatted[1], 0x18, "type 0 length (SMBIOS 2.4+)");
    assert_eq!(bios.string_at(0x04), "Ironvisor");
    assert_eq!(bios.string_at(0x05), BIOS_VERSION);
    assert_eq!(bios.string_at(0x08), BIOS_RELEASE_DATE);
    let date: Vec<&str> = BIOS_RELEASE_DATE.split('/').collect();
    assert_eq!(date.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 2, 4]);
    let characteristics = u64::from_le_bytes(bios.formatted[0x0a..0x12].try_into().unwrap());
    assert_eq!(characteristics, 1 << 3, "characteristics not supported");
    assert_eq!(bios.formatted[0x13] & (1 << 4), 1 << 4, "virtual machine");
    let end = single(&tables, 127);
    assert_eq!(end.formatted.len(), 4);
    assert!(end.strings.is_empty());
}

#[test]
fn the_acpi_tables_do_not_reach_the_smbios_area() {
    // The layout itself is checked at compile time (see the top of smbios.rs).
    // The largest ACPI configuration written after the SMBIOS tables leaves them intact.
    let mem = memory();
    let longest_serial = "S".repeat(MAX_SERIAL_BYTES);
    let identity = SmbiosIdentity {
        uuid: Some(parse_uuid(KNOWN_UUID).unwrap()),
        serial: Some(&longest_serial),
    };
    create_smbios_tables(&mem, &identity).unwrap();
    let devices: Vec<MmioDeviceInfo> = (0..IOAPIC_PINS - VIRTIO_FIRST_GSI)
        .map(|i| MmioDeviceInfo {
            base: VIRTIO_MMIO_BASE + u64::from(i) * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            gsi: VIRTIO_FIRST_GSI + i,
        })
        .collect();
    create_acpi_tables(&mem, &CpuTopology::flat(MAX_ACPI_VCPUS), &devices).unwrap();
    let tables = find_and_parse(&mem);
    assert_eq!(
        single(&tables, 1).string_at(0x07),
        "S".repeat(MAX_SERIAL_BYTES)
    );
}

#[test]
fn uuid_text_is_parsed_in_either_case() {
    let lower = parse_uuid(KNOWN_UUID).unwrap();
    assert_eq!(
        lower,
        [
            0x6a, 0x1c, 0x7d, 0x1e, 0x8b, 0x3f, 0x4c, 0x5a, 0x9e, 0x2d, 0x01, 0x23, 0x45, 0x67,
            0x89, 0xab
        ]
    );
    assert_eq!(parse_uuid(&KNOWN_UUID.to_uppercase()).unwrap(), lower);
    assert_eq!(uuid_to_smbios_bytes(&lower), KNOWN_UUID_SMBIOS_BYTES);
}

#[test]
fn malformed_uuids_are_refused_saying_why() {
    let cases = [
        ("6a1c7d1e-8b3f-4c5a-9e2d-0123456789a", "35 bytes long"),
        ("{6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab}", "38 bytes long"),
        (
            "6a1c7d1e8b3f-4c5a-9e2d-0123456789abc",
            "character 9 is '8', expected '-'",
        ),
        (
            "6a1c7d1e-8b3f-4c5a-9e2d_0123456789ab",
            "character 24 is '_'",
        ),
        (
            "6a1c7d1e-8b3f-4c5a-9e2d-0123456789ag",
            "character 36 is 'g', expected a hex",
        ),
        ("00000000-0000-0000-0000-000000000000", "nil UUID"),
        ("ffffffff-ffff-ffff-ffff-ffffffffffff", "all ones"),
        ("", "0 bytes long"),
        // 36 bytes but not 36 ASCII characters.
        (
            "6a1c7d1e-8b3f-4c5a-9e2d-0123456789é",
            "character 35 is 'é', expected a hex digit",
        ),
    ];
    for (text, needle) in cases {
        let err = parse_uuid(text).unwrap_err();
        assert!(matches!(&err, SmbiosError::Uuid { value, .. } if value == text));
        let message = err.to_string();
        assert!(message.contains(needle), "{text:?}: {message}");
    }
}

#[test]
fn serials_must_be_short_printable_ascii() {
    check_serial("").unwrap();
    check_serial(" !azAZ09~").unwrap();
    check_serial(&"x".repeat(MAX_SERIAL_BYTES)).unwrap();
    for (serial, needle) in [
        ("SN\u{7}1", "'\\u{7}'"),
        ("SN\n1", "'\\n'"),
        ("SN\u{0}1", "'\\0'"),
        ("SN-\u{7f}", "'\\u{7f}'"),
        ("série", "'é'"),
    ] {
        let err = check_serial(serial).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("printable ASCII"), "{message}");
        assert!(message.contains(needle), "{serial:?}: {message}");
    }
    let long = "x".repeat(MAX_SERIAL_BYTES + 1);
    let message = check_serial(&long).unwrap_err().to_string();
    assert!(message.contains("65 bytes long; at most 64"), "{message}");
}

#[test]
fn a_serial_with_a_control_character_is_not_written() {
    let mem = memory();
    let identity = SmbiosIdentity {
        uuid: None,
        serial: Some("SN\u{1b}[2J"),
    };
    let err = create_smbios_tables(&mem, &identity).unwrap_err();
    assert!(matches!(err, SmbiosError::Serial { .. }), "{err}");
    let mut anchor = [0u8; 5];
    mem.read_slice(&mut anchor, GuestAddress(SMBIOS_START))
        .unwrap();
    assert_ne!(anchor, ENTRY_POINT_ANCHOR, "nothing written");
}

#[test]
fn checksum_makes_the_bytes_sum_to_zero() {
    let mut bytes = [0x5f, 0x53, 0x4d, 0x33, 0x5f, 0x00, 0x18, 0x03];
    bytes[5] = checksum(&bytes);
    assert_eq!(sum(&bytes), 0);
    assert_eq!(checksum(&[0u8; 4]), 0);
}

/// Decodes the tables with dmidecode's `--from-dump`, which reads the entry point at
/// offset 0 and the structure table at the file offset the entry point gives.
#[test]
#[ignore = "needs dmidecode (Debian package dmidecode)"]
fn dmidecode_decodes_the_tables() {
    ironvisor_prereq::tool("dmidecode", "dmidecode");
    let mem = memory();
    let identity = SmbiosIdentity {
        uuid: Some(parse_uuid(KNOWN_UUID).unwrap()),
        serial: Some("SN-0042"),
    };
    create_smbios_tables(&mem, &identity).unwrap();
    let tables = find_and_parse(&mem);
    let offset = tables.table_addr - SMBIOS_START;
    let mut dump = vec![0u8; (offset as usize) + tables.table_len];
    mem.read_slice(&mut dump, GuestAddress(SMBIOS_START))
        .unwrap();
    // Point the entry point at the table's offset in the file and fix the checksum.
    dump[16..24].copy_from_slice(&offset.to_le_bytes());
    dump[5] = 0;
    dump[5] = checksum(&dump[..usize::from(ENTRY_POINT_LENGTH)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smbios.bin");
    std::fs::write(&path, &dump).unwrap();
    let output = std::process::Command::new("dmidecode")
        .arg("--from-dump")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let release_date = format!("Release Date: {BIOS_RELEASE_DATE}");
    for expected in [
        "SMBIOS 3.0.0 present.",
        "Vendor: Ironvisor",
        release_date.as_str(),
        "System is a virtual machine",
        "Manufacturer: Ironvisor",
        "Product Name: Ironvisor microVM",
        "Serial Number: SN-0042",
        "End Of Table",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    assert!(
        text.to_lowercase().contains(&format!("uuid: {KNOWN_UUID}")),
        "{text}"
    );
    assert!(!text.contains("Invalid"), "{text}");
}
