//! Order statistics for reports: nearest-rank percentiles and medians of
//! measured latencies, rates and convergence times (`meshcache demo`, the
//! benchmark tool, the partition examples, the simulations' summaries).
//!
//! Both return an observed value, never an interpolated one, and zero
//! (`T::default()`) for no values at all.
//!
//! ```
//! use meshcache::stats::{median, percentile};
//!
//! let sorted = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
//! assert_eq!(percentile(&sorted, 50.0), 5);
//! assert_eq!(percentile(&sorted, 99.0), 10);
//! assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
//! assert_eq!(median::<u64>(&[]), 0);
//! ```

use std::cmp::Ordering;

/// The nearest-rank `p`-th percentile (`0 < p <= 100`) of `sorted`, which
/// must be sorted in ascending order: the smallest value with at least `p`
/// percent of the values at or below it. `p` at or below 0 gives the
/// smallest value, above 100 the largest.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (in any order): the middle value, or for an
/// even count the upper of the two middle ones. With a NaN among the
/// values the result is one of them, but which is unspecified.
pub fn median<T: Copy + Default + PartialOrd>(values: &[T]) -> T {
    if values.is_empty() {
        return T::default();
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=200).collect();
        assert_eq!(percentile(&v, 50.0), 100);
        assert_eq!(percentile(&v, 99.0), 198);
        assert_eq!(percentile(&v, 100.0), 200);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&v, 250.0), 200);
        assert_eq!(percentile(&[7u64], 1.0), 7);
        assert_eq!(percentile::<f64>(&[], 50.0), 0.0);
    }

    #[test]
    fn medians_take_the_upper_middle_of_an_even_count() {
        assert_eq!(median(&[5u64, 1, 3]), 3);
        assert_eq!(median(&[4u64, 1, 3, 2]), 3);
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(median(&[d(30), d(10), d(20)]), d(20));
        assert_eq!(median::<Duration>(&[]), Duration::ZERO);
    }
}
