//! TCP sequence numbers: 32-bit values that wrap, with only a partial order.
//!
//! Two sequence numbers are comparable when they are less than 2^31 apart, as in
//! RFC 793 / RFC 1982 serial number arithmetic. `a.before(b)` means `b` is ahead of
//! `a` within that half of the number space. There is deliberately no `Ord`: sorting
//! wrapping values with a total order is the bug this type exists to prevent.

use core::fmt;

/// A TCP sequence (or acknowledgement) number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// `self + n`, wrapping.
    #[must_use]
    pub const fn add(self, n: u32) -> Self {
        Self(self.0.wrapping_add(n))
    }

    /// `self - n`, wrapping.
    #[must_use]
    pub const fn sub(self, n: u32) -> Self {
        Self(self.0.wrapping_sub(n))
    }

    /// The signed distance from `other` to `self` (`self - other`), in the range
    /// `-2^31 ..= 2^31 - 1`.
    #[must_use]
    pub const fn diff(self, other: Self) -> i64 {
        self.0.wrapping_sub(other.0).cast_signed() as i64
    }

    /// `self` comes strictly before `other`. False for values exactly 2^31 apart,
    /// which are unordered.
    #[must_use]
    pub const fn before(self, other: Self) -> bool {
        let d = self.diff(other);
        d < 0 && d != i32::MIN as i64
    }

    /// `self` comes strictly after `other`.
    #[must_use]
    pub const fn after(self, other: Self) -> bool {
        other.before(self)
    }

    /// The later of two sequence numbers (by wrapping order).
    #[must_use]
    pub const fn max(self, other: Self) -> Self {
        if self.after(other) { self } else { other }
    }
}

impl PartialOrd for Seq {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        let d = self.diff(*other);
        // Exactly 2^31 apart: neither is before the other.
        if d == i64::from(i32::MIN) {
            None
        } else {
            Some(d.cmp(&0))
        }
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_across_2_pow_32() {
        let a = Seq(u32::MAX - 10);
        let b = a.add(20);
        assert_eq!(b, Seq(9));
        assert!(a.before(b));
        assert!(b.after(a));
        assert_eq!(b.diff(a), 20);
        assert_eq!(a.diff(b), -20);
        assert_eq!(a.max(b), b);
        assert!(a < b);
    }

    #[test]
    fn half_space_apart_is_unordered() {
        let a = Seq(0);
        let b = Seq(1 << 31);
        assert_eq!(a.partial_cmp(&b), None);
        assert!(!a.before(b) && !b.before(a) && !a.after(b));
    }
}
