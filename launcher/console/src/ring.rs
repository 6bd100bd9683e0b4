//! A bounded byte ring that keeps the most recent console output.

use std::collections::VecDeque;

/// The last `capacity` bytes written, oldest first.
///
/// Appending never fails: when the ring is full the oldest bytes are discarded. A ring
/// of capacity zero keeps nothing.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl Ring {
    /// Creates an empty ring that keeps at most `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            // Grow on demand: a large ring that only ever sees a short boot log stays small.
            bytes: VecDeque::new(),
            capacity,
        }
    }

    /// Appends `data`, discarding the oldest bytes beyond the capacity.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        // Only the tail of an oversized write can survive; skip copying the rest.
        let data = if data.len() > self.capacity {
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(data);
    }

    /// Copies the contents out, oldest byte first.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let (front, back) = self.bytes.as_slices();
        let mut out = Vec::with_capacity(front.len() + back.len());
        out.extend_from_slice(front);
        out.extend_from_slice(back);
        out
    }

    /// Number of bytes currently held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_below_capacity() {
        let mut ring = Ring::new(16);
        ring.push(b"hello ");
        ring.push(b"world");
        assert_eq!(ring.to_vec(), b"hello world");
        assert_eq!(ring.len(), 11);
    }

    #[test]
    fn wraps_at_the_byte_limit() {
        let mut ring = Ring::new(8);
        ring.push(b"01234567");
        assert_eq!(ring.to_vec(), b"01234567");
        ring.push(b"89");
        assert_eq!(ring.to_vec(), b"23456789");
        for byte in b"abc" {
            ring.push(&[*byte]);
        }
        assert_eq!(ring.to_vec(), b"56789abc");
        assert_eq!(ring.len(), 8);
    }

    #[test]
    fn oversized_write_keeps_its_tail() {
        let mut ring = Ring::new(4);
        ring.push(b"xy");
        ring.push(b"0123456789");
        assert_eq!(ring.to_vec(), b"6789");
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut ring = Ring::new(0);
        ring.push(b"boot log");
        assert!(ring.to_vec().is_empty());
    }

    #[test]
    fn byte_by_byte_matches_bulk() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut bulk = Ring::new(100);
        bulk.push(&data);
        let mut single = Ring::new(100);
        for byte in &data {
            single.push(&[*byte]);
        }
        assert_eq!(bulk.to_vec(), single.to_vec());
        assert_eq!(bulk.to_vec(), &data[900..]);
    }
}
