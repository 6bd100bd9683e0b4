//! Serial console fan-out.
