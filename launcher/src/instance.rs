//! What a hypervisor backend provides to the launcher's main loop. The KVM microVMM
//! ([`crate::vmm`]) is one backend; the QEMU/libvirt software-emulation backend is another.
//! Both serve the same console socket, control API and exit codes.

use std::sync::Arc;

use ironvisor_console::ConsoleHub;
use ironvisor_launcher_api::control::VmControl;

use crate::config::LaunchConfig;
use crate::vmm::events::EventSender;

/// A running VM, whichever backend runs it.
pub trait VmInstance: VmControl {
    /// Asks the guest to shut down by itself (the graceful-stop path); returns at once.
    fn request_guest_shutdown(&self);
    /// Stops the VM for good; called once the main loop has decided how the VM ended.
    fn stop(&self);
}

/// A hypervisor backend: builds a VM from a validated configuration (nothing runs yet,
/// so the console and API sockets can be bound before the guest prints its first byte).
pub trait Backend {
    type Prepared: PreparedInstance;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Builds the VM. Guest console output goes to `console`; lifecycle events (poweroff,
    /// reboot, crash) go to `events`.
    fn prepare(
        &self,
        config: &LaunchConfig,
        console: &ConsoleHub,
        events: &EventSender,
    ) -> Result<Self::Prepared, Self::Error>;

    /// Process-wide set-up every later thread must inherit (the jail's mount namespace):
    /// runs once, after the socket guardian started and before the launcher's first thread.
    fn before_threads(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Whether the running VM's launcher can no longer see its sockets' paths (jailed), so
    /// it cannot tell whether they are still there: its socket guardian removes them.
    fn hides_socket_paths(&self) -> bool {
        false
    }

    /// Whether the launcher starts a socket guardian to remove its sockets if it is killed.
    fn socket_guardian(&self) -> bool {
        true
    }
}

/// A built VM, ready to start.
pub trait PreparedInstance {
    type Instance: VmInstance;
    type Error: std::error::Error + Send + Sync + 'static;

    fn start(self, events: EventSender) -> Result<Arc<Self::Instance>, Self::Error>;
}
