//! Part planning: how a file of a given size is cut into numbered parts.
//!
//! Limits (OSS-PROTOCOL.md §6): parts are 100 KiB to 5 GiB (the last may be smaller), numbered 1 to 10,000.
//! The requested part size is raised, in whole MiB, just enough that no file needs more than 10,000 parts;
//! a file too large even for 10,000 parts of 5 GiB is refused with a clear error.

use super::EngineError;

pub const MIN_PART_SIZE: u64 = 100 * 1024;
pub const MAX_PART_SIZE: u64 = 5 << 30;
pub const MAX_PARTS: u64 = 10_000;
/// The largest object a single PutObject may carry.
pub const MAX_PUT_SIZE: u64 = 5 << 30;
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub size: u64,
    pub part_size: u64,
    pub count: u32,
}

impl PartPlan {
    /// Check a user-requested part size against the protocol limits.
    pub fn validate_part_size(part_size: u64) -> Result<(), EngineError> {
        if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            Ok(())
        } else {
            Err(EngineError::InvalidPartSize { part_size })
        }
    }

    /// Plan `size` bytes with `requested` as the part size, raising it if 10,000 parts would not suffice.
    pub fn new(size: u64, requested: u64) -> Result<PartPlan, EngineError> {
        Self::validate_part_size(requested)?;
        let part_size = Self::fitting_part_size(size, requested)?;
        let count = size.div_ceil(part_size).max(1);
        Ok(PartPlan { size, part_size, count: count as u32 })
    }

    /// Plan with exactly `part_size` (a resumed upload keeps its part size); `None` if it would need more
    /// than 10,000 parts.
    pub fn with_exact_part_size(size: u64, part_size: u64) -> Option<PartPlan> {
        let count = size.div_ceil(part_size).max(1);
        (count <= MAX_PARTS && (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size)).then_some(PartPlan {
            size,
            part_size,
            count: count as u32,
        })
    }

    fn fitting_part_size(size: u64, requested: u64) -> Result<u64, EngineError> {
        if size.div_ceil(requested) <= MAX_PARTS {
            return Ok(requested);
        }
        const MIB: u64 = 1 << 20;
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        if needed > MAX_PART_SIZE {
            return Err(EngineError::TooLarge { size });
        }
        Ok(needed.max(requested))
    }

    /// Byte offset and length of part `number` (1-based).
    pub fn range(&self, number: u32) -> (u64, u64) {
        debug_assert!(number >= 1 && number <= self.count);
        let offset = (number as u64 - 1) * self.part_size;
        let len = self.part_size.min(self.size - offset.min(self.size));
        (offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_file_exactly() {
        let p = PartPlan::new(20 << 20, 8 << 20).unwrap();
        assert_eq!(p.count, 3);
        assert_eq!(p.range(1), (0, 8 << 20));
        assert_eq!(p.range(3), (16 << 20, 4 << 20));
        let p = PartPlan::new(16 << 20, 8 << 20).unwrap();
        assert_eq!(p.count, 2);
        assert_eq!(p.range(2), (8 << 20, 8 << 20));
    }

    #[test]
    fn part_size_is_raised_to_fit_ten_thousand_parts() {
        let size = 100u64 << 30; // 100 GiB at 8 MiB would be 12,800 parts
        let p = PartPlan::new(size, 8 << 20).unwrap();
        assert!(p.count as u64 <= MAX_PARTS);
        assert_eq!(p.part_size % (1 << 20), 0);
        assert_eq!(p.part_size, 11 << 20);
        let exact = (MAX_PARTS) * (8 << 20);
        assert_eq!(PartPlan::new(exact, 8 << 20).unwrap().part_size, 8 << 20);
        assert!(PartPlan::new(exact + 1, 8 << 20).unwrap().part_size > 8 << 20);
    }

    #[test]
    fn limits_are_enforced_with_clear_errors() {
        let e = PartPlan::new(1 << 30, 50 * 1024).unwrap_err().to_string();
        assert!(e.contains("100K") && e.contains("5G"), "{e}");
        assert!(PartPlan::new(1 << 30, 6 << 30).is_err());
        let e = PartPlan::new(MAX_PARTS * MAX_PART_SIZE + 1, 8 << 20).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        assert!(PartPlan::with_exact_part_size(MAX_PARTS * (1 << 20) + 1, 1 << 20).is_none());
    }

    proptest::proptest! {
        #[test]
        fn ranges_tile_the_file(size in 1u64..(1 << 40), part_kib in 100u64..(64 << 10)) {
            let p = PartPlan::new(size, part_kib * 1024).unwrap();
            proptest::prop_assert!(p.count as u64 <= MAX_PARTS);
            let (last_off, last_len) = p.range(p.count);
            proptest::prop_assert_eq!(last_off + last_len, size);
            proptest::prop_assert!(last_len >= 1 && last_len <= p.part_size);
            if p.count > 1 {
                let (o2, _) = p.range(2);
                proptest::prop_assert_eq!(o2, p.part_size);
            }
        }
    }
}
