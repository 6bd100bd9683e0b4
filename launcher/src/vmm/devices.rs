//! The device manager: puts the legacy devices (UART, i8042, CMOS RTC, ACPI power
//! management) on the port I/O bus and one virtio-mmio transport per configured disk, NIC,
//! agent channel and entropy device on the MMIO bus, and wires their interrupts (KVM irqfds) and queue notifications (KVM ioeventfds).

use std::sync::{Arc, Mutex};

use ironvisor_arch::acpi::MmioDeviceInfo;
use ironvisor_arch::layout::{
    ACPI_SLEEP_CONTROL_PORT, CMOS_PORT, CMOS_PORT_SIZE, I8042_DATA_PORT, IOAPIC_PINS, KEYBOARD_GSI,
    SERIAL_GSI, SERIAL_PORT, SERIAL_PORT_SIZE, VIRTIO_FIRST_GSI, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_SIZE,
};
use ironvisor_launcher_api::control::DeviceStatus;
use ironvisor_virtio::DiskFormat;
use ironvisor_virtio::{
    BlockDevice, ConsoleDevice, MmioTransport, NetDevice, RateLimit, RngDevice, VirtioDevice,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bus::{Bus, BusDevice, BusError};
use super::events::EventSender;
use super::legacy::acpi_pm::{AcpiPowerManagement, ACPI_PM_PORTS};
use super::legacy::cmos::{self, Cmos};
use super::legacy::i8042::I8042;
use super::legacy::irq::IrqLine;
use super::legacy::serial::SerialDevice;
use crate::config::{ImageFormat, LaunchConfig};
use crate::GuestMemory;

/// Offset of the QueueNotify register in a virtio-mmio window.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// The i8042 spans ports 0x60..=0x64.
const I8042_PORTS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("creating an eventfd for {what}: {source}")]
    EventFd {
        what: String,
        source: std::io::Error,
    },
    #[error("registering the interrupt of {what} on GSI {gsi}: {source}")]
    Irqfd {
        what: String,
        gsi: u32,
        source: kvm_ioctls::Error,
    },
    #[error("registering queue {queue} notification of {what}: {source}")]
    Ioeventfd {
        what: String,
        queue: usize,
        source: kvm_ioctls::Error,
    },
    #[error("too many virtio devices: GSIs {first}..{last} are all taken")]
    OutOfGsis { first: u32, last: u32 },
    #[error("disk {id} ({path}): {source}")]
    Block {
        id: String,
        path: String,
        source: ironvisor_virtio::BlockError,
    },
    #[error("network interface {id} (tap {tap}): {source}")]
    Net {
        id: String,
        tap: String,
        source: ironvisor_virtio::NetError,
    },
    #[error("agent channel ({path}): {source}")]
    AgentConsole {
        path: String,
        source: ironvisor_virtio::ConsoleError,
    },
    #[error("entropy device ({bytes_per_second} bytes/s): {source}")]
    Rng {
        bytes_per_second: u64,
        source: ironvisor_virtio::RngError,
    },
    #[error("virtio-mmio transport of {what}: {source}")]
    Transport {
        what: String,
        source: ironvisor_virtio::TransportError,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Every device of the VM, as the rest of the VMM needs them.
pub struct Devices {
    pub pio: Bus,
    pub mmio: Bus,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// What the ACPI DSDT must describe.
    pub virtio_acpi: Vec<MmioDeviceInfo>,
    /// What `status` reports.
    pub status: Vec<DeviceStatus>,
}

/// Creates every device of `config` and attaches it to the VM.
pub fn create_devices(
    vm: &VmFd,
    mem: &GuestMemory,
    config: &LaunchConfig,
    console_output: Box<dyn std::io::Write + Send>,
    events: &EventSender,
) -> Result<Devices, DeviceError> {
    let mut manager = Manager {
        vm,
        mem,
        pio: Bus::new(),
        mmio: Bus::new(),
        virtio_acpi: Vec::new(),
        status: Vec::new(),
    };

    let serial = Arc::new(Mutex::new(SerialDevice::new(
        manager.irq_line("serial console", SERIAL_GSI)?,
        console_output,
    )));
    manager.pio.insert(
        "serial",
        u64::from(SERIAL_PORT),
        u64::from(SERIAL_PORT_SIZE),
        serial.clone(),
    )?;
    manager.status.push(DeviceStatus {
        kind: "serial".into(),
        id: "ttyS0".into(),
        mac: None,
        backend: config
            .console
            .socket
            .as_ref()
            .map_or_else(|| "stdio".into(), |p| p.display().to_string()),
        read_only: false,
    });

    let i8042 = Arc::new(Mutex::new(I8042::new(
        manager.irq_line("i8042", KEYBOARD_GSI)?,
        events.clone(),
    )));
    manager.pio.insert(
        "i8042",
        u64::from(I8042_DATA_PORT),
        I8042_PORTS,
        i8042.clone(),
    )?;
    manager.pio.insert(
        "cmos-rtc",
        u64::from(CMOS_PORT),
        u64::from(CMOS_PORT_SIZE),
        Arc::new(Mutex::new(Cmos::new(
            config.clock.rtc_offset_seconds,
            cmos::host_clock(),
        ))),
    )?;
    manager.pio.insert(
        "acpi-pm",
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        ACPI_PM_PORTS,
        Arc::new(Mutex::new(AcpiPowerManagement::new(events.clone()))),
    )?;

    for disk in &config.disks {
        let serial_number = disk.serial.clone().unwrap_or_else(|| disk.id.clone());
        let format = match disk.format {
            ImageFormat::Raw => DiskFormat::Raw,
            ImageFormat::Qcow2 => DiskFormat::Qcow2,
        };
        let mut device =
            BlockDevice::with_format(&disk.path, format, disk.read_only, &serial_number).map_err(
                |source| DeviceError::Block {
                    id: disk.id.clone(),
                    path: disk.path.display().to_string(),
                    source,
                },
            )?;
        if let Some(limit) = &disk.rate_limit {
            device.set_rate_limit(RateLimit::new(limit.bytes_per_second, limit.ops_per_second));
        }
        manager.add_virtio(&format!("disk {}", disk.id), Box::new(device))?;
        manager.status.push(DeviceStatus {
            kind: "virtio-blk".into(),
            id: disk.id.clone(),
            mac: None,
            backend: disk.path.display().to_string(),
            read_only: disk.read_only,
        });
    }

    for net in &config.nets {
        let mac = config.mac_for(net);
        let mut device = NetDevice::new(&net.tap, mac).map_err(|source| DeviceError::Net {
            id: net.id.clone(),
            tap: net.tap.clone(),
            source,
        })?;
        if let Some(limit) = &net.rate_limit {
            device.set_rate_limit(RateLimit::new(limit.bytes_per_second, limit.ops_per_second));
        }
        manager.add_virtio(&format!("network interface {}", net.id), Box::new(device))?;
        manager.status.push(DeviceStatus {
            kind: "virtio-net".into(),
            id: net.id.clone(),
            mac: Some(format_mac(mac)),
            backend: net.tap.clone(),
            read_only: false,
        });
    }

    if let Some(path) = &config.agent_socket {
        let device = ConsoleDevice::new(path).map_err(|source| DeviceError::AgentConsole {
            path: path.display().to_string(),
            source,
        })?;
        manager.add_virtio("agent channel", Box::new(device))?;
        manager.status.push(DeviceStatus {
            kind: "virtio-console".into(),
            id: "agent".into(),
            mac: None,
            backend: path.display().to_string(),
            read_only: false,
        });
    }

    if let Some(rng) = &config.rng {
        let bytes_per_second = rng.bytes_per_second;
        let device = RngDevice::new(bytes_per_second).map_err(|source| DeviceError::Rng {
            bytes_per_second,
            source,
        })?;
        manager.add_virtio("entropy device", Box::new(device))?;
        manager.status.push(DeviceStatus {
            kind: "virtio-rng".into(),
            id: "rng".into(),
            mac: None,
            backend: format!("getrandom ({bytes_per_second} bytes/s)"),
            read_only: false,
        });
    }

    Ok(Devices {
        pio: manager.pio,
        mmio: manager.mmio,
        serial,
        i8042,
        virtio_acpi: manager.virtio_acpi,
        status: manager.status,
    })
}

/// Formats a MAC as `52:54:00:12:34:56`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

struct Manager<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemory,
    pio: Bus,
    mmio: Bus,
    virtio_acpi: Vec<MmioDeviceInfo>,
    status: Vec<DeviceStatus>,
}

impl Manager<'_> {
    fn irqfd(&self, what: &str, gsi: u32) -> Result<EventFd, DeviceError> {
        let event = EventFd::new(EFD_NONBLOCK).map_err(|source| DeviceError::EventFd {
            what: what.to_string(),
            source,
        })?;
        self.vm
            .register_irqfd(&event, gsi)
            .map_err(|source| DeviceError::Irqfd {
                what: what.to_string(),
                gsi,
                source,
            })?;
        Ok(event)
    }

    fn irq_line(&self, what: &str, gsi: u32) -> Result<IrqLine, DeviceError> {
        self.irqfd(what, gsi).map(IrqLine::new)
    }

    fn add_virtio(&mut self, what: &str, device: Box<dyn VirtioDevice>) -> Result<(), DeviceError> {
        let index = self.virtio_acpi.len() as u64;
        let gsi = VIRTIO_FIRST_GSI + self.virtio_acpi.len() as u32;
        if gsi >= IOAPIC_PINS {
            return Err(DeviceError::OutOfGsis {
                first: VIRTIO_FIRST_GSI,
                last: IOAPIC_PINS - 1,
            });
        }
        let base = VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE;
        let irq = self.irqfd(what, gsi)?;
        let transport = MmioTransport::new(self.mem.clone(), device, irq).map_err(|source| {
            DeviceError::Transport {
                what: what.to_string(),
                source,
            }
        })?;
        for (queue, event) in transport.queue_events().iter().enumerate() {
            self.vm
                .register_ioevent(
                    event,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    queue as u32,
                )
                .map_err(|source| DeviceError::Ioeventfd {
                    what: what.to_string(),
                    queue,
                    source,
                })?;
        }
        self.mmio.insert(
            what,
            base,
            VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(transport)),
        )?;
        self.virtio_acpi.push(MmioDeviceInfo {
            base,
            size: VIRTIO_MMIO_SIZE,
            gsi,
        });
        Ok(())
    }
}
