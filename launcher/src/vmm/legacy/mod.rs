//! Legacy PC devices a microVM still needs: the 8250 UART for the console, an i8042
//! controller for Ctrl+Alt+Del and CPU reset, the CMOS RTC for the guest's hardware clock,
//! and the ACPI hardware-reduced power management ports that the FADT points at.

pub mod acpi_pm;
mod calendar;
pub mod cmos;
pub mod i8042;
pub mod irq;
pub mod serial;
