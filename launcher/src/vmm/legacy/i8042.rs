//! A minimal i8042 keyboard controller: enough for Linux to find it (with
//! `i8042.noaux i8042.nomux i8042.dumbkbd`, or its full probe), to deliver Ctrl+Alt+Del
//! (the graceful-shutdown request) and to reset the CPU (`reboot=k`).
//!
//! The device sits on ports 0x60 (data) and 0x64 (status/command); the bus hands it the
//! offset from 0x60, so the command port is offset 4.

use std::collections::VecDeque;

use super::irq::IrqLine;
use crate::vmm::bus::BusDevice;
use crate::vmm::events::{EventSender, VmEvent};

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_COMMAND_LAST: u8 = 0x08;
const STATUS_NOT_INHIBITED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;

// Controller configuration byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_XLATE: u8 = 0x40;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_TO_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_CMD_RESET: u8 = 0xff;
const KBD_CMD_GET_ID: u8 = 0xf2;

/// Ctrl, Alt, Del pressed then released, as a translating controller delivers them
/// (scancode set 1), which is what Linux's atkbd expects on a non-`i8042.direct` port.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
/// The same keys in scancode set 2, for a guest that turned translation off.
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Bytes the output queue holds at most: the controller's one-byte output register plus
/// the keyboard's own 16-byte buffer, as on real hardware. Replies that do not fit are
/// dropped (a real keyboard signals an overrun the same way: the byte is lost), so a
/// guest that writes commands without ever reading cannot grow the queue.
const OUTPUT_LIMIT: usize = 17;

/// The byte the next data-port write carries, after a command that takes a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingWrite {
    None,
    Ctr,
    OutputPort,
    KbdOutput,
    AuxOutput,
    ToAux,
}

/// The controller state.
pub struct I8042 {
    ctr: u8,
    output_port: u8,
    output: VecDeque<(u8, bool)>,
    pending: PendingWrite,
    last_was_command: bool,
    kbd_irq: IrqLine,
    events: EventSender,
}

impl I8042 {
    pub fn new(kbd_irq: IrqLine, events: EventSender) -> Self {
        Self {
            ctr: CTR_KBD_INT | CTR_SYSTEM_FLAG | CTR_XLATE,
            output_port: 0x01,
            output: VecDeque::new(),
            pending: PendingWrite::None,
            last_was_command: false,
            kbd_irq,
            events,
        }
    }

    /// Types Ctrl+Alt+Del on the keyboard: Linux turns it into SIGINT for init (or an
    /// immediate reboot when init did not ask for the signal), the graceful-stop path.
    ///
    /// The host's keys win over what the guest left unread: the oldest queued bytes make
    /// room for the whole sequence.
    pub fn send_ctrl_alt_del(&mut self) {
        let codes: &[u8] = if self.ctr & CTR_XLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        let overflow = (self.output.len() + codes.len()).saturating_sub(OUTPUT_LIMIT);
        self.output.drain(..overflow);
        for &code in codes {
            self.push_kbd(code);
        }
    }

    fn push_kbd(&mut self, byte: u8) {
        if self.push(byte, false) && self.ctr & CTR_KBD_INT != 0 {
            self.kbd_irq.raise();
        }
    }

    fn push_controller(&mut self, byte: u8) {
        // Replies to controller commands are read by polling; no interrupt needed.
        self.push(byte, false);
    }

    /// Queues a byte for the guest unless the queue is full; returns whether it was queued.
    fn push(&mut self, byte: u8, aux: bool) -> bool {
        if self.output.len() >= OUTPUT_LIMIT {
            return false;
        }
        self.output.push_back((byte, aux));
        true
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED;
        if let Some(&(_, aux)) = self.output.front() {
            status |= STATUS_OUTPUT_FULL;
            if aux {
                status |= STATUS_AUX_DATA;
            }
        }
        if self.last_was_command {
            status |= STATUS_COMMAND_LAST;
        }
        status
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending = PendingWrite::None;
        match cmd {
            CMD_READ_CTR => self.push_controller(self.ctr),
            CMD_WRITE_CTR => self.pending = PendingWrite::Ctr,
            CMD_SELF_TEST => self.push_controller(0x55),
            CMD_KBD_TEST | CMD_AUX_TEST => self.push_controller(0x00),
            CMD_KBD_DISABLE | CMD_KBD_ENABLE | CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            CMD_READ_OUTPUT_PORT => self.push_controller(self.output_port),
            CMD_WRITE_OUTPUT_PORT => self.pending = PendingWrite::OutputPort,
            CMD_WRITE_KBD_OUTPUT => self.pending = PendingWrite::KbdOutput,
            CMD_WRITE_AUX_OUTPUT => self.pending = PendingWrite::AuxOutput,
            CMD_WRITE_TO_AUX => self.pending = PendingWrite::ToAux,
            CMD_PULSE_RESET => self.reset_cpu(),
            other => tracing::debug!(command = other, "i8042: unsupported command ignored"),
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match std::mem::replace(&mut self.pending, PendingWrite::None) {
            PendingWrite::Ctr => self.ctr = value,
            PendingWrite::OutputPort => {
                self.output_port = value;
                // Bit 0 low holds the CPU in reset.
                if value & 0x01 == 0 {
                    self.reset_cpu();
                }
            }
            PendingWrite::KbdOutput => self.push_kbd(value),
            PendingWrite::AuxOutput => {
                self.push(value, true);
            }
            // There is no mouse; commands for it are swallowed.
            PendingWrite::ToAux => {}
            PendingWrite::None => self.keyboard_command(value),
        }
    }

    /// Commands addressed to the keyboard itself: acknowledge everything, answer the few
    /// that return data.
    fn keyboard_command(&mut self, value: u8) {
        self.push_kbd(KBD_ACK);
        match value {
            KBD_CMD_RESET => self.push_kbd(KBD_SELF_TEST_OK),
            KBD_CMD_GET_ID => {
                self.push_kbd(0xab);
                self.push_kbd(0x83);
            }
            _ => {}
        }
    }

    fn reset_cpu(&mut self) {
        tracing::info!("guest requested a CPU reset through the i8042");
        self.events.send(VmEvent::GuestReboot);
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => {
                let value = self.output.pop_front().map_or(0, |(byte, _)| byte);
                if !self.output.is_empty() && self.ctr & CTR_KBD_INT != 0 {
                    self.kbd_irq.raise();
                }
                value
            }
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            DATA_OFFSET => self.data(value),
            COMMAND_OFFSET => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::events;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn controller() -> (
        I8042,
        EventFd,
        tokio::sync::mpsc::UnboundedReceiver<VmEvent>,
    ) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = events::channel();
        (
            I8042::new(IrqLine::new(evt.try_clone().unwrap()), tx),
            evt,
            rx,
        )
    }

    fn read_data(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut b = [0u8];
        dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    #[test]
    fn linux_probe_sequence_is_answered() {
        let (mut dev, _evt, _rx) = controller();
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read_data(&mut dev), 0x55);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        let ctr = read_data(&mut dev);
        assert_ne!(ctr & CTR_KBD_INT, 0);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[ctr & !CTR_KBD_INT]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read_data(&mut dev), ctr & !CTR_KBD_INT);
        dev.write(COMMAND_OFFSET, &[CMD_KBD_TEST]);
        assert_eq!(read_data(&mut dev), 0);
        dev.write(DATA_OFFSET, &[KBD_CMD_RESET]);
        assert_eq!(read_data(&mut dev), KBD_ACK);
        assert_eq!(read_data(&mut dev), KBD_SELF_TEST_OK);
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn ctrl_alt_del_is_delivered_as_translated_scancodes_with_an_interrupt() {
        let (mut dev, evt, _rx) = controller();
        dev.send_ctrl_alt_del();
        assert!(evt.read().unwrap() >= 1);
        let codes: Vec<u8> = (0..CTRL_ALT_DEL_SET1.len())
            .map(|_| read_data(&mut dev))
            .collect();
        assert_eq!(codes, CTRL_ALT_DEL_SET1);
    }

    #[test]
    fn ctrl_alt_del_uses_set_two_when_translation_is_off() {
        let (mut dev, _evt, _rx) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[CTR_KBD_INT | CTR_SYSTEM_FLAG]);
        dev.send_ctrl_alt_del();
        let codes: Vec<u8> = (0..11).map(|_| read_data(&mut dev)).collect();
        assert_eq!(&codes[..4], &[0x14, 0x11, 0xe0, 0x71]);
        assert_eq!(codes[10], 0x14);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_output_queue() {
        let (mut dev, _evt, _rx) = controller();
        for round in 0..10_000u32 {
            match round % 5 {
                0 => dev.write(DATA_OFFSET, &[KBD_CMD_GET_ID]),
                1 => dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]),
                2 => dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]),
                3 => {
                    dev.write(COMMAND_OFFSET, &[CMD_WRITE_KBD_OUTPUT]);
                    dev.write(DATA_OFFSET, &[0x42]);
                }
                _ => {
                    dev.write(COMMAND_OFFSET, &[CMD_WRITE_AUX_OUTPUT]);
                    dev.write(DATA_OFFSET, &[0x43]);
                }
            }
        }
        assert_eq!(dev.output.len(), OUTPUT_LIMIT);
        // The host's Ctrl+Alt+Del still gets through whole, at the end of the queue.
        dev.send_ctrl_alt_del();
        assert_eq!(dev.output.len(), OUTPUT_LIMIT);
        let codes: Vec<u8> = (0..OUTPUT_LIMIT).map(|_| read_data(&mut dev)).collect();
        assert_eq!(
            &codes[OUTPUT_LIMIT - CTRL_ALT_DEL_SET1.len()..],
            CTRL_ALT_DEL_SET1
        );
        assert_eq!(status(&mut dev) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn pulse_reset_and_output_port_reset_request_a_reboot() {
        let (mut dev, _evt, mut rx) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_PULSE_RESET]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::GuestReboot);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x00]);
        assert_eq!(rx.try_recv().unwrap(), VmEvent::GuestReboot);
    }
}
