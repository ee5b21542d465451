//! The summaries the zero-config benchmarks report: medians and
//! nearest-rank percentiles of their samples (milliseconds).

/// The `p`-th percentile (0 < p ≤ 100) by nearest rank: the smallest
/// sample with at least `p`% of the samples at or below it. Of 20 samples
/// the 99th is the largest. `None` without samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median; of an even count, the mean of the two middle samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// The largest sample.
pub fn max(samples: &[f64]) -> Option<f64> {
    samples.iter().copied().max_by(f64::total_cmp)
}

/// `"1,234"` for 1234.4: milliseconds in a table.
pub fn ms(v: f64) -> String {
    let rounded = v.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 { format!("-{out}") } else { out }
}

/// [`ms`] of a value that may be missing (`-`).
pub fn ms_or_dash(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 50.0), Some(10.0));
        assert_eq!(percentile(&twenty, 99.0), Some(20.0));
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(median(&[4.0, 1.0, 3.0, 10.0]), Some(3.5));
        assert_eq!(max(&[4.0, 1.0]), Some(4.0));
    }

    #[test]
    fn milliseconds_read_well() {
        assert_eq!(ms(1234.4), "1,234");
        assert_eq!(ms(999.6), "1,000");
        assert_eq!(ms(12.0), "12");
        assert_eq!(ms(-1500.0), "-1,500");
        assert_eq!(ms_or_dash(None), "-");
    }
}
