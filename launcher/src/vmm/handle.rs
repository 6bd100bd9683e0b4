//! The running VM as the control API sees it: [`VmHandle`] implements
//! [`VmControl`] on top of the vCPU set and the event channel.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ironvisor_launcher_api::control::{
    ControlError, DeviceStatus, ShutdownMode, VmControl, VmState, VmStatus,
};

use super::bus::lock_device;
use super::events::{EventSender, VmEvent};
use super::legacy::i8042::I8042;
use super::vcpu::VcpuSet;
use crate::instance::VmInstance;

/// What must outlive the vCPU threads: the VM fd, the KVM handle and guest memory.
pub struct VmResources {
    /// The I/O buses (every device) are dropped here, on the thread that drops the
    /// handle, not on whichever vCPU thread ends last: a device's cleanup (the console
    /// socket's removal) is not something the vCPU seccomp filter allows.
    pub _buses: Arc<crate::vmm::vcpu::IoBuses>,
    pub _vm: kvm_ioctls::VmFd,
    pub _kvm: kvm_ioctls::Kvm,
    pub _mem: crate::GuestMemory,
}

/// Control surface of one running VM.
pub struct VmHandle {
    name: String,
    memory_mib: u64,
    devices: Vec<DeviceStatus>,
    vcpus: VcpuSet,
    i8042: Arc<Mutex<I8042>>,
    events: EventSender,
    state: Mutex<VmState>,
    started: Instant,
    // Last: dropped after the vCPU threads are gone.
    _resources: VmResources,
}

impl VmHandle {
    pub fn new(
        name: String,
        memory_mib: u64,
        devices: Vec<DeviceStatus>,
        vcpus: VcpuSet,
        i8042: Arc<Mutex<I8042>>,
        events: EventSender,
        resources: VmResources,
    ) -> Self {
        Self {
            name,
            memory_mib,
            devices,
            vcpus,
            i8042,
            events,
            state: Mutex::new(VmState::Running),
            started: Instant::now(),
            _resources: resources,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, VmState> {
        lock_device(&self.state)
    }
}

impl VmInstance for VmHandle {
    /// Asks the guest to shut down (Ctrl+Alt+Del), resuming it first if it is paused.
    fn request_guest_shutdown(&self) {
        let mut state = self.state();
        if *state == VmState::Paused {
            self.vcpus.resume();
        }
        *state = VmState::ShuttingDown;
        drop(state);
        lock_device(&self.i8042).send_ctrl_alt_del();
    }

    /// Stops every vCPU; the VM is gone afterwards.
    fn stop(&self) {
        *self.state() = VmState::Stopped;
        if let Err(err) = self.vcpus.stop() {
            tracing::error!(%err, "stopping vCPUs");
        }
    }
}

impl VmControl for VmHandle {
    fn status(&self) -> VmStatus {
        VmStatus {
            name: self.name.clone(),
            state: *self.state(),
            vcpus: self.vcpus.count(),
            memory_mib: self.memory_mib,
            devices: self.devices.clone(),
            uptime: self.started.elapsed(),
            backend: "kvm".into(),
            vcpu_affinity: self.vcpus.pinned(),
        }
    }

    fn pause(&self) -> Result<(), ControlError> {
        let mut state = self.state();
        if *state != VmState::Running {
            return Err(ControlError::InvalidState(*state));
        }
        self.vcpus.pause().map_err(|err| {
            // Leave the VM running rather than half paused.
            self.vcpus.resume();
            ControlError::Internal(err.to_string())
        })?;
        *state = VmState::Paused;
        tracing::info!("VM paused");
        Ok(())
    }

    fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.state();
        if *state != VmState::Paused {
            return Err(ControlError::InvalidState(*state));
        }
        self.vcpus.resume();
        *state = VmState::Running;
        tracing::info!("VM resumed");
        Ok(())
    }

    fn shutdown(&self, mode: ShutdownMode) -> Result<(), ControlError> {
        let state = *self.state();
        if state == VmState::Stopped {
            return Err(ControlError::InvalidState(state));
        }
        self.events.send(VmEvent::ShutdownRequested(mode));
        Ok(())
    }
}
