//! A disk's or an interface's `rateLimit`: at least one rate, each at least 1 per second,
//! the byte rate a valid quantity.

use super::{bytes_at, FieldPath, ValidationError};
use crate::v1alpha1::DeviceRateLimit;

/// The bytes and operations per second of a valid rate limit (`None` where unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Bytes per second.
    pub bytes_per_second: Option<u64>,
    /// Operations per second.
    pub ops_per_second: Option<u64>,
}

/// The rates of `limit`, or `None` when its byte rate is not a quantity of bytes.
pub fn rates(limit: &DeviceRateLimit) -> Option<Rates> {
    let bytes_per_second = match &limit.bytes_per_second {
        Some(quantity) => Some(crate::quantity::to_bytes(quantity).ok()?),
        None => None,
    };
    Some(Rates {
        bytes_per_second,
        ops_per_second: limit.ops_per_second,
    })
}

/// Checks `limit` (at `path`).
pub(super) fn check(limit: &DeviceRateLimit, path: &FieldPath, errors: &mut Vec<ValidationError>) {
    if limit.bytes_per_second.is_none() && limit.ops_per_second.is_none() {
        errors.push(ValidationError::RateLimitEmpty {
            path: path.clone().into(),
        });
        return;
    }
    if let Some(quantity) = &limit.bytes_per_second {
        let field = path.child("bytesPerSecond");
        if bytes_at(quantity, &field, errors) == Some(0) {
            errors.push(ValidationError::RateLimitZero { path: field.into() });
        }
    }
    if limit.ops_per_second == Some(0) {
        errors.push(ValidationError::RateLimitZero {
            path: path.child("opsPerSecond").into(),
        });
    }
}
