//! A fixed-size log-linear histogram for latencies (HDR-like, hand-written).
//!
//! Values 0..64 are exact; above that each power of two is split into 64 buckets, so a
//! reported percentile is within 1/64 (1.6 %) of the true value. Values are clamped at
//! 2^40 (in microseconds that is 12 days). The memory is fixed (18 KiB) whatever the
//! count, so each reader task keeps its own and they are merged at the end: recording is
//! a plain increment, with no sharing between threads.

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// The largest value kept distinct; larger ones land in the last bucket (and `max`).
const MAX_VALUE: u64 = (1 << 40) - 1;
const BUCKETS: usize = bucket_of(MAX_VALUE) + 1;

/// Which bucket `v` (at most `MAX_VALUE`) falls in.
const fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB;
    ((shift as u64 + 1) * SUB + sub) as usize
}

/// The smallest and largest value of bucket `i`.
fn bucket_bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let low = (SUB + i % SUB) << shift;
    (low, low + (1 << shift) - 1)
}

/// Counts of values (any unit; the bench records microseconds).
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min())
            .field("p50", &self.percentile(50.0))
            .field("p99", &self.percentile(99.0))
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `n` times the same value.
    pub fn record_n(&mut self, value: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[bucket_of(value.min(MAX_VALUE))] += n;
        self.total += n;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value) * u128::from(n);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 { 0 } else { self.min }
    }

    /// The largest value recorded, exactly (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at or below which `p` percent of the values lie (0 when empty): the
    /// upper bound of the bucket holding that rank, never above the true maximum. So
    /// `percentile(100.0)` is the maximum, and a percentile may overstate by up to 1.6 %.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64) * p.clamp(0.0, 100.0) / 100.0).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // The last bucket also holds everything clamped into it.
                if i == BUCKETS - 1 {
                    return self.max;
                }
                return bucket_bounds(i).1.min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, high) = bucket_bounds(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert!(high >= low);
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(high), i);
            // Relative width at most 1/64.
            assert!((high - low) * SUB <= low.max(1), "bucket {i} too wide");
            expected_low = high + 1;
        }
        assert_eq!(expected_low, MAX_VALUE + 1);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in [3, 1, 2, 5, 4] {
            h.record(v);
        }
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.percentile(20.0), 1);
        assert_eq!(h.percentile(50.0), 3);
        assert_eq!(h.percentile(100.0), 5);
        assert_eq!((h.min(), h.max(), h.count()), (1, 5, 5));
        assert!((h.mean() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_are_within_the_bucket_error() {
        let mut h = Histogram::new();
        for us in 1..=100_000u64 {
            h.record(us);
        }
        for (p, exact) in [(50.0, 50_000u64), (99.0, 99_000), (99.9, 99_900)] {
            let got = h.percentile(p);
            assert!(got >= exact, "p{p}: {got} understates {exact}");
            assert!(
                (got - exact) as f64 / exact as f64 <= 1.0 / 64.0,
                "p{p}: {got} vs {exact}"
            );
        }
        assert_eq!(h.percentile(100.0), 100_000);
        assert_eq!(h.percentile(99.9999), 100_000);
    }

    #[test]
    fn merging_equals_recording_into_one() {
        let (mut a, mut b, mut both) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5000u64 {
            let v = v * v % 77_777;
            if v % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            both.record(v);
        }
        a.merge(&b);
        assert_eq!(a, both);
        a.merge(&Histogram::new());
        assert_eq!(a, both, "merging an empty one changes nothing");
    }

    #[test]
    fn empty_and_huge_values_are_handled() {
        let mut h = Histogram::new();
        assert_eq!(
            (h.percentile(50.0), h.min(), h.max(), h.mean()),
            (0, 0, 0, 0.0)
        );
        h.record(u64::MAX);
        h.record_n(10, 0);
        assert_eq!(h.count(), 1);
        assert_eq!(h.max(), u64::MAX);
        assert_eq!(h.percentile(50.0), u64::MAX, "clamped bucket, exact max");
    }
}
