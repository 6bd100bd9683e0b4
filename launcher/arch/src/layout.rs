//! x86_64 guest physical address map and interrupt/port assignments.
//!
//! One place for every fixed address so that the boot code, the ACPI tables and the
//! device manager agree on where things are.

/// Start of the GDT used for the 64-bit boot protocol.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) IDT used at boot.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map table (array of `hvm_memmap_table_entry`), after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (the initrd), after the memory map (room for 32 entries).
pub const PVH_MODLIST_START: u64 = 0x6440;
/// Linux `boot_params` ("zero page") for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity-mapped boot page tables (64-bit boot protocol): the PML4 page.
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table page the first PML4 entry points at.
pub const PDPTE_START: u64 = 0xa000;
/// The page directory page (512 entries of 2 MiB pages, identity-mapping 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (bytes, including the terminating NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI RSDP, in the BIOS read-only area where the kernel scans for it.
pub const RSDP_START: u64 = 0xe0000;
/// ACPI tables (XSDT, FADT, DSDT, MADT) follow the RSDP.
pub const ACPI_TABLES_START: u64 = 0xe0100;
/// End (exclusive) of the area reserved for ACPI tables: the SMBIOS area starts here.
pub const ACPI_TABLES_END: u64 = SMBIOS_START;
/// SMBIOS 3.0 entry point (`_SM3_`), at the start of the 64 KiB that Linux scans on
/// 16-byte boundaries for an SMBIOS entry point when it boots without EFI.
pub const SMBIOS_START: u64 = 0xf0000;
/// SMBIOS structure table, after the 24-byte entry point (16-byte aligned).
pub const SMBIOS_TABLES_START: u64 = 0xf0020;
/// End (exclusive) of the SMBIOS area, the end of the BIOS read-only area.
pub const SMBIOS_END: u64 = 0x100000;
/// First byte of high RAM, where the kernel is loaded.
pub const HIGH_RAM_START: u64 = 0x100000;

/// 32-bit MMIO hole: RAM that would fall in [MMIO_GAP_START, 4 GiB) is placed above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole; RAM resumes here when the guest has more than
/// [`MMIO_GAP_START`] bytes.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio device windows: device `i` lives at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// I/O APIC MMIO base (KVM in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base (KVM in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS pages (KVM_SET_TSS_ADDR, three pages), inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (KVM_SET_IDENTITY_MAP_ADDR), just below the TSS pages.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Number of I/O APIC pins (GSIs) of KVM's in-kernel I/O APIC.
pub const IOAPIC_PINS: u32 = 24;
/// GSI of the i8042 keyboard interrupt.
pub const KEYBOARD_GSI: u32 = 1;
/// GSI of the first 8250 UART (COM1).
pub const SERIAL_GSI: u32 = 4;
/// First GSI handed to virtio-mmio devices; the rest follow in order.
pub const VIRTIO_FIRST_GSI: u32 = 5;

/// COM1 port base.
pub const SERIAL_PORT: u16 = 0x3f8;
/// Number of I/O ports COM1 occupies.
pub const SERIAL_PORT_SIZE: u16 = 8;
/// i8042 keyboard controller data port (Ctrl+Alt+Del and CPU reset).
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 keyboard controller command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// CMOS/RTC (MC146818) index port; the data port follows it.
pub const CMOS_PORT: u16 = 0x70;
/// Number of I/O ports of the CMOS/RTC (index and data).
pub const CMOS_PORT_SIZE: u16 = 2;
/// CMOS register holding the century (BCD), as the FADT's `CENTURY` field names it.
pub const CMOS_CENTURY_REGISTER: u8 = 0x32;
/// ACPI hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG), 1 byte.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
/// ACPI hardware-reduced sleep status register (FADT SLEEP_STATUS_REG), 1 byte.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
/// ACPI reset register (FADT RESET_REG), 1 byte; writing [`ACPI_RESET_VALUE`] reboots.
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the FADT tells the guest to write to [`ACPI_RESET_PORT`] to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP value that the DSDT's `\_S5` package announces for soft-off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// GDT selector of the boot code segment.
pub const BOOT_CODE_SELECTOR: u16 = 0x08;
/// GDT selector of the boot data segment.
pub const BOOT_DATA_SELECTOR: u16 = 0x10;
/// GDT selector of the boot task-state segment.
pub const BOOT_TSS_SELECTOR: u16 = 0x18;
