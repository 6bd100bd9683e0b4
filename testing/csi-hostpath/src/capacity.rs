//! The size of a new volume, from the request's capacity range.
//!
//! The size is `required_bytes`, else `limit_bytes` when only that is set, else
//! [`DEFAULT_BYTES`]. Block volumes are rounded to whole 512-byte sectors (a loop
//! device ignores a partial last sector) when the range allows it.

use crate::proto::csi::CapacityRange;

/// The size of a volume whose request sets no capacity: 1 GiB.
pub const DEFAULT_BYTES: u64 = 1 << 30;

/// The sector size block volumes are rounded to.
pub const SECTOR_BYTES: u64 = 512;

/// Why a capacity range is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// A bound is negative.
    #[error("capacity_range.{field} is negative ({value})")]
    Negative {
        /// `required_bytes` or `limit_bytes`.
        field: &'static str,
        /// The value.
        value: i64,
    },
    /// The limit is below the required size.
    #[error("capacity_range.limit_bytes ({limit}) is less than required_bytes ({required})")]
    LimitBelowRequired {
        /// The required size.
        required: u64,
        /// The limit.
        limit: u64,
    },
}

impl From<CapacityError> for tonic::Status {
    fn from(error: CapacityError) -> Self {
        match error {
            CapacityError::Negative { .. } => tonic::Status::invalid_argument(error.to_string()),
            CapacityError::LimitBelowRequired { .. } => {
                tonic::Status::out_of_range(error.to_string())
            }
        }
    }
}

/// The sizes a request accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityBounds {
    /// Smallest acceptable size; 0 when unset.
    pub required: u64,
    /// Largest acceptable size, if set.
    pub limit: Option<u64>,
}

fn non_negative(field: &'static str, value: i64) -> Result<u64, CapacityError> {
    u64::try_from(value).map_err(|_| CapacityError::Negative { field, value })
}

impl CapacityBounds {
    /// The bounds of `range` (absent: anything).
    pub fn from_range(range: Option<&CapacityRange>) -> Result<Self, CapacityError> {
        let Some(range) = range else {
            return Ok(Self {
                required: 0,
                limit: None,
            });
        };
        let required = non_negative("required_bytes", range.required_bytes)?;
        let limit = non_negative("limit_bytes", range.limit_bytes)?;
        let limit = (limit > 0).then_some(limit);
        if let Some(limit) = limit {
            if limit < required {
                return Err(CapacityError::LimitBelowRequired { required, limit });
            }
        }
        Ok(Self { required, limit })
    }

    /// The size of a new volume, a multiple of `granularity` when the bounds allow one.
    pub fn size(&self, granularity: u64) -> u64 {
        let base = if self.required > 0 {
            self.required
        } else {
            self.limit.unwrap_or(DEFAULT_BYTES)
        };
        let granularity = granularity.max(1);
        let up = base.div_ceil(granularity).saturating_mul(granularity);
        let down = base / granularity * granularity;
        if self.accepts(up) {
            up
        } else if down > 0 && self.accepts(down) {
            down
        } else {
            base
        }
    }

    /// Whether an existing volume of `bytes` satisfies the bounds.
    pub fn accepts(&self, bytes: u64) -> bool {
        bytes >= self.required && self.limit.is_none_or(|limit| bytes <= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(required_bytes: i64, limit_bytes: i64) -> Result<CapacityBounds, CapacityError> {
        CapacityBounds::from_range(Some(&CapacityRange {
            required_bytes,
            limit_bytes,
        }))
    }

    #[test]
    fn required_then_limit_then_one_gib() {
        assert_eq!(bounds(5 << 20, 0).unwrap().size(1), 5 << 20);
        assert_eq!(bounds(5 << 20, 9 << 20).unwrap().size(1), 5 << 20);
        assert_eq!(bounds(0, 9 << 20).unwrap().size(1), 9 << 20);
        assert_eq!(bounds(0, 0).unwrap().size(1), DEFAULT_BYTES);
        assert_eq!(
            CapacityBounds::from_range(None).unwrap().size(1),
            DEFAULT_BYTES
        );
    }

    #[test]
    fn block_sizes_round_to_sectors_within_the_limit() {
        assert_eq!(bounds(1000, 0).unwrap().size(SECTOR_BYTES), 1024);
        assert_eq!(bounds(1000, 1500).unwrap().size(SECTOR_BYTES), 1024);
        assert_eq!(bounds(0, 1000).unwrap().size(SECTOR_BYTES), 512);
        assert_eq!(bounds(1000, 1000).unwrap().size(SECTOR_BYTES), 1000);
        assert_eq!(bounds(100, 0).unwrap().size(SECTOR_BYTES), 512);
    }

    #[test]
    fn a_limit_below_required_is_out_of_range() {
        let e = bounds(10, 5).unwrap_err();
        assert_eq!(
            e,
            CapacityError::LimitBelowRequired {
                required: 10,
                limit: 5
            }
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::OutOfRange);
    }

    #[test]
    fn negative_bounds_are_invalid() {
        let e = bounds(-1, 0).unwrap_err();
        assert!(e.to_string().contains("required_bytes"), "{e}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
        assert!(bounds(0, -1).is_err());
    }

    #[test]
    fn existing_sizes_are_checked_against_both_bounds() {
        let b = bounds(10, 20).unwrap();
        assert!(b.accepts(10) && b.accepts(20) && b.accepts(15));
        assert!(!b.accepts(9) && !b.accepts(21));
        let open = bounds(10, 0).unwrap();
        assert!(open.accepts(u64::MAX) && !open.accepts(9));
    }
}
