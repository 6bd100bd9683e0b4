//! ACPI tables for a hardware-reduced x86_64 microVM: RSDP → XSDT → FADT (→ DSDT) and MADT.
//!
//! The DSDT announces the `\_S5_` soft-off sleep type, the legacy devices (COM1, the i8042
//! and the CMOS RTC) and one `LNRO0005` device per virtio-mmio window, which is how a stock
//! distribution kernel (virtio_mmio as a module, no command-line devices) finds them. The
//! MADT lists each vCPU's local APIC under the APIC id its place in the
//! [`CpuTopology`] gives it. Power-off, sleep status and reset go through the
//! FADT's hardware-reduced I/O port registers.

use acpi_tables::aml::{self, Path};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_TABLES_END, ACPI_TABLES_START, APIC_START, CMOS_CENTURY_REGISTER,
    CMOS_PORT, CMOS_PORT_SIZE, I8042_COMMAND_PORT, I8042_DATA_PORT, IOAPIC_PINS, IOAPIC_START,
    KEYBOARD_GSI, RSDP_START, SERIAL_GSI, SERIAL_PORT, SERIAL_PORT_SIZE,
};
use crate::topology::{CpuTopology, MAX_XAPIC_ID};

/// OEM id written in every table.
pub const OEM_ID: [u8; 6] = *b"IRNVSR";
/// Revision written in every table's OEM revision field.
pub const OEM_REVISION: u32 = 1;
/// `_HID` of a virtio-mmio device described by ACPI.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// FADT `IAPC_BOOT_ARCH`: an 8042 keyboard controller is present.
pub const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// FADT `IAPC_BOOT_ARCH`: do not probe for VGA.
pub const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT `IAPC_BOOT_ARCH`: there is no CMOS RTC (never set: the machine has one).
pub const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// Hypervisor vendor identity in the FADT.
const HYPERVISOR_VENDOR: [u8; 8] = *b"IRNVISOR";
/// Largest vCPU count the xAPIC MADT entries can describe (APIC ids 0..=254), reached
/// only when every count of the topology is a power of two.
pub const MAX_ACPI_VCPUS: u32 = MAX_XAPIC_ID + 1;
/// Largest number of virtio-mmio devices the DSDT names (`VR00`..`VRFF`).
pub const MAX_ACPI_DEVICES: usize = 256;
/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// Tables are placed at 8-byte aligned addresses.
const TABLE_ALIGN: u64 = 8;

/// One virtio-mmio device to describe in the DSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest physical base of the register window.
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// GSI (I/O APIC pin) of the device's interrupt.
    pub gsi: u32,
}

/// Errors from building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The topology numbers its last vCPU past the highest id an xAPIC MADT entry holds.
    #[error(
        "cannot describe {vcpus} vCPUs ({sockets} sockets x {cores} cores x {threads} \
         threads) in the MADT: the last one's APIC id would be {apic_id}, at most {max} fit"
    )]
    ApicIdTooHigh {
        /// vCPU count.
        vcpus: u32,
        /// Sockets of the topology.
        sockets: u32,
        /// Cores per socket.
        cores: u32,
        /// Threads per core.
        threads: u32,
        /// APIC id of the last vCPU.
        apic_id: u32,
        /// Highest id that fits.
        max: u32,
    },
    /// More devices than the DSDT names.
    #[error("cannot describe {count} virtio-mmio devices in the DSDT: at most {max}")]
    TooManyDevices {
        /// Requested count.
        count: usize,
        /// Largest supported count.
        max: usize,
    },
    /// A device window is not a valid 32-bit memory range.
    #[error(
        "virtio-mmio device {index}: window [{base:#x}, +{size:#x}) must be non-empty and \
         below 4 GiB for Memory32Fixed"
    )]
    DeviceWindow {
        /// Device index.
        index: usize,
        /// Window base.
        base: u64,
        /// Window size.
        size: u64,
    },
    /// A device GSI is not an I/O APIC pin.
    #[error("virtio-mmio device {index}: GSI {gsi} is not an I/O APIC pin (0..{pins})")]
    DeviceGsi {
        /// Device index.
        index: usize,
        /// Requested GSI.
        gsi: u32,
        /// Number of I/O APIC pins.
        pins: u32,
    },
    /// The tables do not fit in the reserved area.
    #[error("the ACPI tables end at {end:#x}, past the end of their area at {limit:#x}")]
    TablesTooLarge {
        /// Where they would end.
        end: u64,
        /// Where the area ends.
        limit: u64,
    },
    /// Writing a table to guest memory failed.
    #[error("writing the {table} table at guest address {addr:#x}: {source}")]
    Write {
        /// Table signature.
        table: &'static str,
        /// Where it was being written.
        addr: u64,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Builds the ACPI tables for the vCPUs of `topology` and the `virtio` devices, writes
/// them to guest memory and returns the RSDP address ([`RSDP_START`]).
pub fn create_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    topology: &CpuTopology,
    virtio: &[MmioDeviceInfo],
) -> Result<GuestAddress, AcpiError> {
    let vcpus = topology.vcpus();
    let _span = tracing::info_span!("create_acpi_tables", vcpus, devices = virtio.len()).entered();
    if topology.max_apic_id() > MAX_XAPIC_ID {
        return Err(AcpiError::ApicIdTooHigh {
            vcpus,
            sockets: topology.sockets(),
            cores: topology.cores(),
            threads: topology.threads(),
            apic_id: topology.max_apic_id(),
            max: MAX_XAPIC_ID,
        });
    }
    if virtio.len() > MAX_ACPI_DEVICES {
        return Err(AcpiError::TooManyDevices {
            count: virtio.len(),
            max: MAX_ACPI_DEVICES,
        });
    }

    let mut placer = Placer::new(mem);
    let dsdt = build_dsdt(virtio)?;
    let dsdt_addr = placer.place("DSDT", &dsdt)?;
    let fadt = build_fadt(dsdt_addr);
    let fadt_addr = placer.place("FACP", &fadt)?;
    let madt = build_madt(topology);
    let madt_addr = placer.place("APIC", &madt)?;
    let mut xsdt = XSDT::new(OEM_ID, table_id(b"XSDT"), OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = placer.place("XSDT", &to_bytes(&xsdt))?;

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    if RSDP_START + rsdp.len() as u64 > ACPI_TABLES_START {
        return Err(AcpiError::TablesTooLarge {
            end: RSDP_START + rsdp.len() as u64,
            limit: ACPI_TABLES_START,
        });
    }
    write_table(mem, "RSDP", RSDP_START, &rsdp)?;
    tracing::debug!(
        dsdt = format_args!("{dsdt_addr:#x}"),
        fadt = format_args!("{fadt_addr:#x}"),
        madt = format_args!("{madt_addr:#x}"),
        xsdt = format_args!("{xsdt_addr:#x}"),
        end = format_args!("{:#x}", placer.next),
        "ACPI tables written"
    );
    Ok(GuestAddress(RSDP_START))
}

/// Places tables one after another from [`ACPI_TABLES_START`].
struct Placer<'a, M> {
    mem: &'a M,
    next: u64,
}

impl<'a, M: GuestMemoryBackend> Placer<'a, M> {
    fn new(mem: &'a M) -> Self {
        Self {
            mem,
            next: ACPI_TABLES_START,
        }
    }

    fn place(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr + bytes.len() as u64;
        if end > ACPI_TABLES_END {
            return Err(AcpiError::TablesTooLarge {
                end,
                limit: ACPI_TABLES_END,
            });
        }
        write_table(self.mem, table, addr, bytes)?;
        self.next = end.div_ceil(TABLE_ALIGN) * TABLE_ALIGN;
        Ok(addr)
    }
}

fn write_table<M: GuestMemoryBackend>(
    mem: &M,
    table: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), AcpiError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| AcpiError::Write {
            table,
            addr,
            source,
        })
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// OEM table id: "IRNV" followed by the table's signature.
fn table_id(signature: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"IRNV____";
    id[4..].copy_from_slice(signature);
    id
}

/// The DSDT: `\_S5_` and one `LNRO0005` device per virtio-mmio window under `\_SB_`.
fn build_dsdt(virtio: &[MmioDeviceInfo]) -> Result<Vec<u8>, AcpiError> {
    let mut body = Vec::new();
    // SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5 = aml::Name::new(
        Path::new("_S5_"),
        &aml::Package::new(vec![&ACPI_S5_SLEEP_TYPE, &0u8, &0u8, &0u8]),
    );
    s5.to_aml_bytes(&mut body);

    let mut devices = legacy_devices_aml();
    for (index, device) in virtio.iter().enumerate() {
        device_aml(index, device)?.to_aml_bytes(&mut devices);
    }
    body.extend_from_slice(&aml::Scope::raw(Path::new("\\_SB_"), devices));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        table_id(b"DSDT"),
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    Ok(dsdt.as_slice().to_vec())
}

/// The legacy PC devices: COM1 (`PNP0501`), the i8042 keyboard controller (`PNP0303`)
/// and the CMOS RTC (`PNP0B00`). A hardware-reduced ACPI guest has no legacy PIC, so Linux
/// maps ISA interrupts only for devices the DSDT describes; without these, IRQ 4 and IRQ 1
/// cannot be requested and the console tty and the keyboard (Ctrl+Alt+Del) do not work.
/// The RTC is described without an interrupt: it raises none (no alarm, periodic or
/// update interrupts), so Linux's rtc_cmos serves the time and no alarms, and IRQ 8 stays
/// free for a virtio device.
fn legacy_devices_aml() -> Vec<u8> {
    let mut bytes = Vec::new();
    let rtc_io = aml::IO::new(CMOS_PORT, CMOS_PORT, 1, CMOS_PORT_SIZE as u8);
    aml::Device::new(
        Path::new("RTC_"),
        vec![
            &aml::Name::new(Path::new("_HID"), &aml::EISAName::new("PNP0B00")),
            &aml::Name::new(
                Path::new("_CRS"),
                &aml::ResourceTemplate::new(vec![&rtc_io]),
            ),
        ],
    )
    .to_aml_bytes(&mut bytes);

    let com1_io = aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, SERIAL_PORT_SIZE as u8);
    // Consumer, edge-triggered, active-high, exclusive.
    let com1_irq = aml::Interrupt::new(true, true, false, false, SERIAL_GSI);
    aml::Device::new(
        Path::new("COM1"),
        vec![
            &aml::Name::new(Path::new("_HID"), &aml::EISAName::new("PNP0501")),
            &aml::Name::new(Path::new("_UID"), &0u8),
            &aml::Name::new(
                Path::new("_CRS"),
                &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
            ),
        ],
    )
    .to_aml_bytes(&mut bytes);

    let kbd_data = aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let kbd_command = aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, true, false, false, KEYBOARD_GSI);
    aml::Device::new(
        Path::new("PS2K"),
        vec![
            &aml::Name::new(Path::new("_HID"), &aml::EISAName::new("PNP0303")),
            &aml::Name::new(
                Path::new("_CRS"),
                &aml::ResourceTemplate::new(vec![&kbd_data, &kbd_command, &kbd_irq]),
            ),
        ],
    )
    .to_aml_bytes(&mut bytes);
    bytes
}

/// AML bytes of one virtio-mmio `Device`.
struct DeviceAml(Vec<u8>);

impl Aml for DeviceAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn device_aml(index: usize, device: &MmioDeviceInfo) -> Result<DeviceAml, AcpiError> {
    let window = match (u32::try_from(device.base), u32::try_from(device.size)) {
        (Ok(base), Ok(size)) if size > 0 && u64::from(base) + u64::from(size) <= 1 << 32 => {
            Some((base, size))
        }
        _ => None,
    };
    let Some((base, size)) = window else {
        return Err(AcpiError::DeviceWindow {
            index,
            base: device.base,
            size: device.size,
        });
    };
    if device.gsi >= IOAPIC_PINS {
        return Err(AcpiError::DeviceGsi {
            index,
            gsi: device.gsi,
            pins: IOAPIC_PINS,
        });
    }
    // `index` < MAX_ACPI_DEVICES (256), so two hex digits always suffice.
    let name = format!("VR{:02X}", index & 0xff);
    let uid = u32::try_from(index).unwrap_or(u32::MAX);
    let hid = aml::Name::new(Path::new("_HID"), &VIRTIO_MMIO_HID);
    let uid = aml::Name::new(Path::new("_UID"), &uid);
    let registers = aml::Memory32Fixed::new(true, base, size);
    // Consumer, edge-triggered, active-high, exclusive.
    let interrupt = aml::Interrupt::new(true, true, false, false, device.gsi);
    let crs = aml::Name::new(
        Path::new("_CRS"),
        &aml::ResourceTemplate::new(vec![&registers, &interrupt]),
    );
    let mut bytes = Vec::new();
    aml::Device::new(Path::new(&name), vec![&hid, &uid, &crs]).to_aml_bytes(&mut bytes);
    Ok(DeviceAml(bytes))
}

/// The FADT: hardware-reduced, with the sleep and reset registers on I/O ports.
fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let byte_port = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, table_id(b"FACP"), OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_VGA_NOT_PRESENT).into();
    fadt.century = CMOS_CENTURY_REGISTER;
    fadt.reset_reg = byte_port(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.sleep_control_reg = byte_port(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = byte_port(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    to_bytes(&fadt.finalize())
}

/// The MADT: one enabled local APIC per vCPU (processor UID = vCPU index, APIC id from the
/// topology; the caller checked that every id fits a byte) and the I/O APIC.
fn build_madt(topology: &CpuTopology) -> Vec<u8> {
    let local_apic = u32::try_from(APIC_START).unwrap_or(u32::MAX);
    let io_apic = u32::try_from(IOAPIC_START).unwrap_or(u32::MAX);
    let mut madt = MADT::new(
        OEM_ID,
        table_id(b"APIC"),
        OEM_REVISION,
        LocalInterruptController::Address(local_apic),
    );
    for index in 0..topology.vcpus() {
        let uid = u8::try_from(index).unwrap_or(u8::MAX);
        let apic_id = u8::try_from(topology.apic_id(index)).unwrap_or(u8::MAX);
        madt.add_structure(ProcessorLocalApic::new(
            uid,
            apic_id,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(0, io_apic, 0));
    to_bytes(&madt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{VIRTIO_FIRST_GSI, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
    use crate::memory::create_guest_memory;
    use vm_memory::GuestMemoryMmap;

    fn devices(count: u32) -> Vec<MmioDeviceInfo> {
        (0..count)
            .map(|i| MmioDeviceInfo {
                base: VIRTIO_MMIO_BASE + u64::from(i) * VIRTIO_MMIO_SIZE,
                size: VIRTIO_MMIO_SIZE,
                gsi: VIRTIO_FIRST_GSI + i,
            })
            .collect()
    }

    fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }
    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }
    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }
    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Reads a whole table (header length) at `addr` and checks signature and checksum.
    fn read_table(mem: &GuestMemoryMmap<()>, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let mut header = [0u8; 36];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        assert_eq!(&header[..4], signature, "signature at {addr:#x}");
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36);
        assert!(addr + len as u64 <= ACPI_TABLES_END);
        assert!(addr >= ACPI_TABLES_START);
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(
            sum(&table),
            0,
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        table
    }

    struct Tables {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
    }

    fn walk(mem: &GuestMemoryMmap<()>, rsdp_addr: GuestAddress) -> Tables {
        assert_eq!(rsdp_addr, GuestAddress(RSDP_START));
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&rsdp, 20), 36);
        let xsdt = read_table(mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = read_table(mem, u64_at(&xsdt, 36), b"FACP");
        let madt = read_table(mem, u64_at(&xsdt, 44), b"APIC");
        let dsdt = read_table(mem, u64_at(&fadt, 140), b"DSDT");
        Tables { fadt, madt, dsdt }
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|window| *window == needle)
            .count()
    }

    #[test]
    fn fadt_is_hardware_reduced_with_io_port_registers() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let rsdp = create_acpi_tables(&mem, &CpuTopology::flat(1), &[]).unwrap();
        let Tables { fadt, .. } = walk(&mem, rsdp);
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "FADT major revision");
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16_at(&fadt, 109);
        assert_ne!(boot_arch & IAPC_BOOT_ARCH_8042, 0, "8042 present");
        assert_ne!(boot_arch & IAPC_BOOT_ARCH_VGA_NOT_PRESENT, 0);
        assert_eq!(
            boot_arch & IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT,
            0,
            "CMOS RTC present"
        );
        assert_eq!(fadt[108], CMOS_CENTURY_REGISTER, "CENTURY");
        // GAS: space id 1 (System I/O), width 8, offset 0, byte access, address.
        let gas = |offset: usize| (fadt[offset..offset + 4].to_vec(), u64_at(&fadt, offset + 4));
        assert_eq!(gas(116), (vec![1, 8, 0, 1], u64::from(ACPI_RESET_PORT)));
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        assert_eq!(
            gas(244),
            (vec![1, 8, 0, 1], u64::from(ACPI_SLEEP_CONTROL_PORT))
        );
        assert_eq!(
            gas(256),
            (vec![1, 8, 0, 1], u64::from(ACPI_SLEEP_STATUS_PORT))
        );
        assert_eq!(&fadt[268..276], &HYPERVISOR_VENDOR);
    }

    #[test]
    fn madt_has_one_local_apic_per_vcpu_and_the_io_apic() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let topologies = [
            CpuTopology::flat(1),
            CpuTopology::flat(4),
            CpuTopology::flat(64),
            // 3 cores take 2 bits: ids 0, 1, 2 and 4, 5, 6.
            CpuTopology::new(2, 3, 1).unwrap(),
            CpuTopology::new(2, 2, 2).unwrap(),
        ];
        for topology in topologies {
            let vcpus = topology.vcpus();
            let rsdp = create_acpi_tables(&mem, &topology, &devices(2)).unwrap();
            let Tables { madt, .. } = walk(&mem, rsdp);
            assert_eq!(u32_at(&madt, 36), APIC_START as u32);
            assert_eq!(u32_at(&madt, 40), 0, "no PCAT_COMPAT");
            let mut offset = 44;
            let mut local_apics = Vec::new();
            let mut io_apics = Vec::new();
            while offset < madt.len() {
                let (kind, len) = (madt[offset], usize::from(madt[offset + 1]));
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        local_apics.push((
                            madt[offset + 2],
                            madt[offset + 3],
                            u32_at(&madt, offset + 4),
                        ));
                    }
                    1 => {
                        assert_eq!(len, 12);
                        io_apics.push((
                            madt[offset + 2],
                            u32_at(&madt, offset + 4),
                            u32_at(&madt, offset + 8),
                        ));
                    }
                    other => panic!("unexpected MADT entry type {other}"),
                }
                offset += len;
            }
            assert_eq!(offset, madt.len());
            assert_eq!(local_apics.len(), vcpus as usize);
            for (index, (uid, apic_id, flags)) in (0u32..).zip(local_apics) {
                let expected = (index, topology.apic_id(index), 1);
                assert_eq!((u32::from(uid), u32::from(apic_id), flags), expected);
            }
            if topology.cores() == 3 {
                let ids: Vec<u32> = (0..6).map(|i| topology.apic_id(i)).collect();
                assert_eq!(ids, [0, 1, 2, 4, 5, 6]);
            }
            assert_eq!(io_apics, vec![(0, IOAPIC_START as u32, 0)]);
        }
    }

    #[test]
    fn dsdt_names_each_virtio_device_and_s5() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let virtio = devices(3);
        let rsdp = create_acpi_tables(&mem, &CpuTopology::flat(2), &virtio).unwrap();
        let Tables { dsdt, .. } = walk(&mem, rsdp);
        assert_eq!(dsdt[8], DSDT_REVISION);
        assert_eq!(count(&dsdt, b"LNRO0005"), 3);
        // Name(_S5_, Package(4) { 5, 0, 0, 0 }): NameOp, name, PackageOp, pkglen, count, 5.
        let s5 = [
            0x08,
            b'_',
            b'S',
            b'5',
            b'_',
            0x12,
            0x07,
            0x04,
            0x0a,
            ACPI_S5_SLEEP_TYPE,
        ];
        assert_eq!(count(&dsdt, &s5), 1);
        assert_eq!(count(&dsdt, b"_SB_"), 1);
        for (index, device) in virtio.iter().enumerate() {
            assert_eq!(count(&dsdt, format!("VR{index:02X}").as_bytes()), 1);
            // Memory32Fixed(ReadWrite, base, size)
            let mut mem32 = vec![0x86, 0x09, 0x00, 0x01];
            mem32.extend_from_slice(&(device.base as u32).to_le_bytes());
            mem32.extend_from_slice(&(device.size as u32).to_le_bytes());
            assert_eq!(count(&dsdt, &mem32), 1, "device {index} registers");
            // Extended interrupt: consumer + edge (0x03), active-high, exclusive, one GSI.
            let mut irq = vec![0x89, 0x06, 0x00, 0x03, 0x01];
            irq.extend_from_slice(&device.gsi.to_le_bytes());
            assert_eq!(count(&dsdt, &irq), 1, "device {index} interrupt");
        }
    }

    #[test]
    fn dsdt_without_devices_has_s5_and_the_legacy_devices() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let rsdp = create_acpi_tables(&mem, &CpuTopology::flat(1), &[]).unwrap();
        let Tables { dsdt, .. } = walk(&mem, rsdp);
        assert_eq!(count(&dsdt, b"LNRO0005"), 0);
        assert_eq!(count(&dsdt, b"_S5_"), 1);
        // The RTC: EISA id PNP0B00 (0x000bd041 little-endian) and IO(Decode16, 0x70,
        // 0x70, 1, 2), and no interrupt descriptor of its own: only COM1's and the
        // keyboard's extended interrupts are there.
        assert_eq!(count(&dsdt, &[0x41, 0xd0, 0x0b, 0x00]), 1, "PNP0B00");
        assert_eq!(
            count(&dsdt, &[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]),
            1,
            "RTC ports"
        );
        assert_eq!(
            count(&dsdt, &[0x89, 0x06, 0x00]),
            2,
            "interrupts: COM1, i8042"
        );
    }

    #[test]
    fn invalid_inputs_are_rejected() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert!(matches!(
            create_acpi_tables(&mem, &CpuTopology::flat(256), &[]),
            Err(AcpiError::ApicIdTooHigh {
                vcpus: 256,
                apic_id: 255,
                ..
            })
        ));
        // 2 x 65 x 1: the 65 cores take 7 bits, so socket 1's last core has id 128 + 64.
        let sparse = CpuTopology::new(2, 65, 1).unwrap();
        assert!(create_acpi_tables(&mem, &sparse, &[]).is_ok());
        // 2 x 65 x 2: socket 1 starts at id 256.
        let too_sparse = CpuTopology::new(2, 65, 2).unwrap();
        let err = create_acpi_tables(&mem, &too_sparse, &[]).unwrap_err();
        assert!(
            err.to_string().contains("2 sockets x 65 cores x 2 threads"),
            "{err}"
        );
        let high = MmioDeviceInfo {
            base: 0x1_0000_0000,
            size: 0x1000,
            gsi: 5,
        };
        let err = create_acpi_tables(&mem, &CpuTopology::flat(1), &[high]).unwrap_err();
        assert!(
            matches!(err, AcpiError::DeviceWindow { index: 0, .. }),
            "{err}"
        );
        let empty = MmioDeviceInfo {
            size: 0,
            ..devices(1)[0]
        };
        assert!(matches!(
            create_acpi_tables(&mem, &CpuTopology::flat(1), &[empty]),
            Err(AcpiError::DeviceWindow { .. })
        ));
        let bad_gsi = MmioDeviceInfo {
            gsi: IOAPIC_PINS,
            ..devices(1)[0]
        };
        let err = create_acpi_tables(&mem, &CpuTopology::flat(1), &[bad_gsi]).unwrap_err();
        assert!(err.to_string().contains("GSI 24"), "{err}");
        assert!(matches!(
            create_acpi_tables(
                &mem,
                &CpuTopology::flat(1),
                &vec![devices(1)[0]; MAX_ACPI_DEVICES + 1]
            ),
            Err(AcpiError::TooManyDevices { .. })
        ));
    }

    #[test]
    fn largest_configuration_fits() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let virtio = devices(IOAPIC_PINS - VIRTIO_FIRST_GSI);
        let rsdp = create_acpi_tables(&mem, &CpuTopology::flat(MAX_ACPI_VCPUS), &virtio).unwrap();
        let Tables { dsdt, .. } = walk(&mem, rsdp);
        assert_eq!(count(&dsdt, b"LNRO0005"), virtio.len());
    }

    /// Disassembles the tables with ACPICA's `iasl`.
    #[test]
    #[ignore = "needs iasl (Debian package acpica-tools)"]
    fn iasl_disassembles_the_tables() {
        ironvisor_prereq::tool("iasl", "acpica-tools");
        let mem = create_guest_memory(64 << 20).unwrap();
        let rsdp = create_acpi_tables(&mem, &CpuTopology::flat(2), &devices(2)).unwrap();
        let tables = walk(&mem, rsdp);
        let dir = tempfile::tempdir().unwrap();
        let disassemble = |name: &str, bytes: &[u8]| -> String {
            let input = dir.path().join(format!("{name}.dat"));
            std::fs::write(&input, bytes).unwrap();
            let output = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&input)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "iasl -d {name}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).unwrap()
        };
        let dsdt = disassemble("dsdt", &tables.dsdt);
        assert!(dsdt.contains("Name (_S5, Package (0x04)"), "{dsdt}");
        assert_eq!(
            dsdt.matches("Name (_HID, \"LNRO0005\")").count(),
            2,
            "{dsdt}"
        );
        assert!(
            dsdt.contains("Memory32Fixed (ReadWrite,\n                    0xD0001000,"),
            "{dsdt}"
        );
        assert!(
            dsdt.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"),
            "{dsdt}"
        );
        let fadt = disassemble("fadt", &tables.fadt);
        assert!(fadt.contains("Hardware Reduced (V5) : 1"), "{fadt}");
        assert!(fadt.contains("CMOS RTC Not Present (V5) : 0"), "{fadt}");
        assert!(
            dsdt.contains("Name (_HID, EisaId (\"PNP0B00\") /* AT Real-Time Clock */)"),
            "{dsdt}"
        );
        assert!(
            fadt.contains("8042 Present on ports 60/64 (V2) : 1"),
            "{fadt}"
        );
        let madt = disassemble("madt", &tables.madt);
        assert_eq!(madt.matches("Processor Local APIC").count(), 2, "{madt}");
        assert!(madt.contains("I/O APIC"), "{madt}");
    }
}
