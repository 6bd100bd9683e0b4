//! Host capability checks.
