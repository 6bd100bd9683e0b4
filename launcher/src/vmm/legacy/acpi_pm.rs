//! ACPI hardware-reduced power management: the sleep control/status registers and the
//! reset register that the FADT points at. Writing SLP_EN with the `\_S5` sleep type
//! powers the VM off; writing the reset value reboots it.
//!
//! The device covers ports 0x600..0x603: offset 0 sleep control, 1 sleep status, 2 reset.

use ironvisor_arch::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT,
};
use ironvisor_virtio::log_limit::LogLimiter;

use crate::vmm::bus::BusDevice;
use crate::vmm::events::{EventSender, VmEvent};

const SLEEP_CONTROL_OFFSET: u64 = 0;
const SLEEP_STATUS_OFFSET: u64 = (ACPI_SLEEP_STATUS_PORT - ACPI_SLEEP_CONTROL_PORT) as u64;
const RESET_OFFSET: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT) as u64;
/// Number of ports the device occupies.
pub const ACPI_PM_PORTS: u64 = RESET_OFFSET + 1;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// WAK_STS in the sleep status register.
const WAKE_STATUS: u8 = 1 << 7;

pub struct AcpiPowerManagement {
    events: EventSender,
    /// The budget of the guest-triggered log lines (a guest can loop on a bad sleep type).
    log: LogLimiter,
}

impl AcpiPowerManagement {
    pub fn new(events: EventSender) -> Self {
        Self {
            events,
            log: LogLimiter::default(),
        }
    }
}

impl BusDevice for AcpiPowerManagement {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == SLEEP_STATUS_OFFSET {
            if let Some(first) = data.first_mut() {
                *first = WAKE_STATUS;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == ACPI_S5_SLEEP_TYPE {
                    tracing::info!("guest requested ACPI soft-off (S5)");
                    self.events.send(VmEvent::GuestPoweroff);
                } else if let Some(suppressed) = self.log.admit("sleep-state") {
                    tracing::warn!(
                        sleep_type,
                        suppressed,
                        "guest requested an unsupported sleep state"
                    );
                }
            }
            RESET_OFFSET if value == ACPI_RESET_VALUE => {
                tracing::info!("guest requested a reset through the ACPI reset register");
                self.events.send(VmEvent::GuestReboot);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::events;

    #[test]
    fn s5_with_slp_en_powers_off_and_reset_value_reboots() {
        let (tx, mut rx) = events::channel();
        let mut pm = AcpiPowerManagement::new(tx);
        pm.write(SLEEP_CONTROL_OFFSET, &[ACPI_S5_SLEEP_TYPE << SLP_TYP_SHIFT]);
        assert!(rx.try_recv().is_err(), "no SLP_EN, no poweroff");
        pm.write(
            SLEEP_CONTROL_OFFSET,
            &[(ACPI_S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN],
        );
        assert_eq!(rx.try_recv().unwrap(), VmEvent::GuestPoweroff);
        pm.write(SLEEP_CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]);
        assert!(rx.try_recv().is_err(), "S3 is not supported");
        pm.write(RESET_OFFSET, &[ACPI_RESET_VALUE]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::GuestReboot);
        let mut status = [0u8];
        pm.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status[0], WAKE_STATUS);
    }
}
