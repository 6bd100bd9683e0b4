//! The KVM virtual machine: built from a validated configuration in small named steps,
//! then run until the guest or a stop request ends it.
//!
//! Build order: guest memory → KVM VM (memory slots, irqchip, PIT) → kernel and initrd
//! (given, or read from the boot disk: [`boot_source`]) →
//! devices → ACPI and SMBIOS tables → boot protocol data → vCPUs. Nothing runs until
//! [`PreparedVm::start`].

pub mod affinity;
pub mod boot_source;
pub mod bus;
pub mod devices;
pub mod events;
pub mod handle;
pub mod legacy;
pub mod run;
pub mod vcpu;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ironvisor_arch::{acpi, boot, memory, smbios};
use ironvisor_console::{ConsoleHub, ConsoleInput};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::boot_trace;

use self::affinity::{AffinityError, VcpuPinning};
use self::boot_source::{BootSourceError, LoadedBoot};
use self::bus::lock_device;
use self::devices::{create_devices, DeviceError, Devices};
use self::events::EventSender;
use self::handle::{VmHandle, VmResources};
use self::legacy::serial::SerialDevice;
use self::vcpu::{IoBuses, VcpuError, VcpuSet};
use self::vm::VmError;
use crate::config::LaunchConfig;
use crate::instance::{Backend, PreparedInstance};
use crate::jail;
use crate::privileges::{self, PrivilegeError, RunAs};
use crate::seccomp::{self, SeccompLevel};
use crate::GuestMemory;

/// Why the VM could not be built or started. Each variant names the step and the input.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("guest memory of {mib} MiB: {source}")]
    Memory {
        mib: u64,
        source: ironvisor_arch::memory::MemoryError,
    },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] BootSourceError),
    #[error("writing boot parameters: {0}")]
    BootParams(ironvisor_arch::boot::BootError),
    #[error("building ACPI tables: {0}")]
    Acpi(#[from] ironvisor_arch::acpi::AcpiError),
    #[error("building SMBIOS tables: {0}")]
    Smbios(#[from] ironvisor_arch::smbios::SmbiosError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Affinity(#[from] AffinityError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
}

/// A fully built VM whose vCPUs have not started yet.
pub struct PreparedVm {
    name: String,
    memory_mib: u64,
    // Field order is drop order: devices and vCPUs go before the VM fd and guest memory.
    devices: Devices,
    vcpus: Vec<VcpuFd>,
    pinning: VcpuPinning,
    /// The user to become before the first vCPU runs (`None`: stay as started).
    run_as: Option<RunAs>,
    /// Whether to seal the jail before the first vCPU runs (see [`crate::jail`]).
    jail: bool,
    vm: VmFd,
    _kvm: Kvm,
    _mem: GuestMemory,
}

/// Builds the VM described by `config` (already validated) on the KVM device at `kvm_path`.
#[tracing::instrument(skip_all, fields(vm = %config.name))]
pub fn build(
    config: &LaunchConfig,
    kvm_path: &Path,
    console: &ConsoleHub,
    events: &EventSender,
) -> Result<PreparedVm, VmmError> {
    let pinning = VcpuPinning::new(&config.vcpu_affinity)?;
    let mem = memory::create_guest_memory(config.memory_mib << 20).map_err(|source| {
        VmmError::Memory {
            mib: config.memory_mib,
            source,
        }
    })?;
    boot_trace::mark("memory_mapped");
    let kvm = vm::open_kvm(kvm_path)?;
    let vm_fd = vm::create_vm(&kvm, &mem)?;
    boot_trace::mark("vm_created");

    let LoadedBoot {
        kernel,
        initrd,
        cmdline,
    } = boot_source::load(config, &mem)?;
    tracing::info!(entry = ?kernel.entry, "kernel loaded");
    boot_trace::mark("kernel_loaded");

    let devices = create_devices(&vm_fd, &mem, config, Box::new(console.output()), events)?;
    console.set_input(Arc::new(SerialInput(devices.serial.clone())));

    let topology = config.topology();
    let rsdp = acpi::create_acpi_tables(&mem, &topology, &devices.virtio_acpi)?;
    let identity = smbios::SmbiosIdentity {
        uuid: config.system.uuid_bytes()?,
        serial: config.system.serial.as_deref(),
    };
    smbios::create_smbios_tables(&mem, &identity)?;
    boot::configure_boot(&mem, &kernel, &cmdline, initrd.as_ref(), rsdp)
        .map_err(VmmError::BootParams)?;

    boot_trace::mark("devices_created");
    let vcpus = vcpu::create_vcpus(&kvm, &vm_fd, &mem, &topology, &kernel.entry)?;
    boot_trace::mark("vcpus_configured");
    Ok(PreparedVm {
        name: config.name.clone(),
        memory_mib: config.memory_mib,
        devices,
        vcpus,
        pinning,
        run_as: None,
        jail: false,
        vm: vm_fd,
        _kvm: kvm,
        _mem: mem,
    })
}

/// The KVM microVMM backend, on the KVM device at `kvm_path`. Once the VM is built and
/// before any vCPU runs, with `jail` the launcher confines itself to an empty root (see
/// [`crate::jail`]), and with `run_as` it becomes that user.
pub struct KvmBackend {
    pub kvm_path: PathBuf,
    pub run_as: Option<RunAs>,
    pub jail: bool,
    /// Whether to start a socket guardian (off when the parent removes the sockets).
    pub socket_guardian: bool,
}

impl Backend for KvmBackend {
    type Prepared = PreparedVm;
    type Error = VmmError;

    fn prepare(
        &self,
        config: &LaunchConfig,
        console: &ConsoleHub,
        events: &EventSender,
    ) -> Result<PreparedVm, VmmError> {
        let mut prepared = build(config, &self.kvm_path, console, events)?;
        prepared.run_as = self.run_as;
        prepared.jail = self.jail;
        Ok(prepared)
    }

    fn before_threads(&self) -> Result<(), VmmError> {
        if self.jail {
            jail::enter_own_mount_namespace()?;
        }
        Ok(())
    }

    fn hides_socket_paths(&self) -> bool {
        self.jail
    }

    fn socket_guardian(&self) -> bool {
        self.socket_guardian
    }
}

impl PreparedInstance for PreparedVm {
    type Instance = VmHandle;
    type Error = VmmError;

    /// Starts the vCPU threads.
    fn start(self, events: EventSender) -> Result<Arc<VmHandle>, VmmError> {
        let Devices {
            pio,
            mmio,
            i8042,
            status,
            ..
        } = self.devices;
        let buses = Arc::new(IoBuses { pio, mmio });
        // The launcher is jailed, root dropped and every thread confined before a vCPU
        // thread exists (see `crate::jail`, `crate::privileges` and `crate::seccomp`). The
        // status file that proves the switch is opened while /proc is still visible.
        let process_status = self
            .run_as
            .map(|_| privileges::ProcessStatus::open())
            .transpose()?;
        if self.jail {
            jail::seal()?;
        }
        if let (Some(run_as), Some(process_status)) = (self.run_as, process_status) {
            privileges::drop_privileges(run_as, &process_status)?;
        }
        let seccomp_level = SeccompLevel::from_env()?;
        seccomp::install_process(seccomp_level)?;
        seccomp::confine_device_workers(seccomp_level);
        let vcpus = VcpuSet::start(
            self.vcpus,
            &self.pinning,
            buses.clone(),
            events.clone(),
            seccomp_level,
        )?;
        Ok(Arc::new(VmHandle::new(
            self.name,
            self.memory_mib,
            status,
            vcpus,
            i8042,
            events,
            VmResources {
                _buses: buses,
                _vm: self.vm,
                _kvm: self._kvm,
                _mem: self._mem,
            },
        )))
    }
}

/// Console input from attached clients, fed into the UART.
struct SerialInput(Arc<Mutex<SerialDevice>>);

impl ConsoleInput for SerialInput {
    fn send(&self, bytes: &[u8]) {
        lock_device(&self.0).push_input(bytes);
    }
}
