//! Per-second series and the onset rule: when a share (non-2xx, degraded) or the p99
//! departed from its own recent past.
//!
//! The baseline of second `t` is the median `m` and the median absolute deviation `d` of
//! the metric over the (up to) 30 seconds before it, of which at least 5 must have data.
//! A share departs when it exceeds `m + max(4 × 1.4826 × d, 0.05)` — four robust standard
//! deviations, and at least five points — for two seconds in a row; a p99 when it exceeds
//! `max(2m, m + 100 ms)` for two seconds in a row. A steady background of 3–5 % non-2xx
//! (404s, client errors) moves `m`, not the onset. Seconds with fewer than 10 requests
//! are not judged.

use std::collections::BTreeMap;

/// Latency bins: four per doubling from 1 ms (bin 0: < 1 ms).
const BINS: usize = 96;

/// Seconds of history a baseline uses.
const WINDOW: i64 = 30;
/// Seconds of history a baseline needs.
const MIN_HISTORY: usize = 5;
/// Requests a second needs to be judged.
const MIN_REQUESTS: u32 = 10;

/// One second of one route.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Requests.
    pub n: u32,
    /// Non-2xx answers (499 included).
    pub non_2xx: u32,
    /// Degraded answers (a fallback served).
    pub degraded: u32,
    /// When the second's first non-2xx and first degraded answer were logged (epoch
    /// seconds; infinite for none), and its first answer in each latency bin (milliseconds
    /// into the second; `u16::MAX` for none): an onset is dated by its first bad or slow
    /// answer, not by the start of its second.
    first_bad: [f64; 2],
    first_in_bin: [u16; BINS],
    lat: [u32; BINS],
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            n: 0,
            non_2xx: 0,
            degraded: 0,
            first_bad: [f64::INFINITY; 2],
            first_in_bin: [u16::MAX; BINS],
            lat: [0; BINS],
        }
    }
}

fn bin(ms: f64) -> usize {
    if ms < 1.0 {
        0
    } else {
        ((ms.log2() * 4.0) as usize + 1).min(BINS - 1)
    }
}

fn bin_upper(b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        2f64.powf(b as f64 / 4.0)
    }
}

impl Bucket {
    /// Counts one request, logged at `t` (epoch seconds).
    pub fn add(&mut self, t: f64, status: u16, degraded: bool, ms: f64) {
        let bad = !(200..300).contains(&status);
        self.n += 1;
        self.non_2xx += u32::from(bad);
        self.degraded += u32::from(degraded);
        let b = bin(ms);
        self.lat[b] += 1;
        let ms_in = ((t - t.floor()) * 1000.0) as u16;
        self.first_in_bin[b] = self.first_in_bin[b].min(ms_in.min(999));
        for (first, counts) in self.first_bad.iter_mut().zip([bad, degraded]) {
            if counts {
                *first = first.min(t);
            }
        }
    }

    /// When the first answer that counts for `metric` was logged in this second, which
    /// starts at `second`: the first non-2xx or degraded one, or for the p99 the first
    /// slower than `limit` (ms).
    fn first(&self, metric: Metric, limit: f64, second: i64) -> f64 {
        match metric {
            Metric::Non2xx => self.first_bad[0],
            Metric::Degraded => self.first_bad[1],
            Metric::P99 => (0..BINS)
                .filter(|b| bin_upper(*b) > limit)
                .map(|b| self.first_in_bin[b])
                .min()
                .filter(|ms| *ms != u16::MAX)
                .map_or(f64::INFINITY, |ms| second as f64 + f64::from(ms) / 1000.0),
        }
    }

    /// The p99 latency (the upper edge of its bin, ms).
    pub fn p99(&self) -> f64 {
        let want = (f64::from(self.n) * 0.99).ceil() as u32;
        let mut seen = 0;
        for (b, c) in self.lat.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return bin_upper(b);
            }
        }
        0.0
    }
}

/// Which metric departed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Non-2xx share.
    Non2xx,
    /// Degraded share.
    Degraded,
    /// p99 latency.
    P99,
}

impl Metric {
    /// As reported.
    pub const fn as_str(self) -> &'static str {
        match self {
            Metric::Non2xx => "non-2xx share",
            Metric::Degraded => "degraded share",
            Metric::P99 => "p99",
        }
    }
}

/// A departure: when, which metric, its value and its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Onset {
    /// The second it started (epoch).
    pub at: i64,
    /// The first answer of that second that counts for the metric (epoch seconds, with
    /// the fraction): what a report dates the onset by.
    pub first: f64,
    /// The metric.
    pub metric: Metric,
    /// Its value that second.
    pub value: f64,
    /// The baseline median.
    pub baseline: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The first departure of `metric` in `series`, by the rule in the module doc.
pub fn onset(series: &BTreeMap<i64, Bucket>, metric: Metric) -> Option<Onset> {
    let value = |b: &Bucket| match metric {
        Metric::Non2xx => f64::from(b.non_2xx) / f64::from(b.n),
        Metric::Degraded => f64::from(b.degraded) / f64::from(b.n),
        Metric::P99 => b.p99(),
    };
    let judged: Vec<(i64, f64, &Bucket)> = series
        .iter()
        .filter(|(_, b)| b.n >= MIN_REQUESTS)
        .map(|(t, b)| (*t, value(b), b))
        .collect();
    // The baseline median and the limit, when second `i` is over it. The window's start
    // is found by binary search in the sorted seconds, so a judgement costs the window
    // (at most 30 seconds), never the history: linear in the log's length.
    let over = |i: usize| -> Option<(f64, f64)> {
        let (t, ..) = judged[i];
        let from = judged[..i].partition_point(|(s, ..)| t - s > WINDOW);
        let mut past: Vec<f64> = judged[from..i].iter().map(|(_, v, _)| *v).collect();
        if past.len() < MIN_HISTORY {
            return None;
        }
        let m = median(&mut past);
        let mut dev: Vec<f64> = past.iter().map(|v| (v - m).abs()).collect();
        let d = median(&mut dev);
        let limit = match metric {
            Metric::P99 => (2.0 * m).max(m + 100.0),
            _ => m + (4.0 * 1.4826 * d).max(0.05),
        };
        (judged[i].1 > limit).then_some((m, limit))
    };
    (0..judged.len().saturating_sub(1)).find_map(|i| {
        let (m, limit) = over(i)?;
        over(i + 1)?;
        let (at, _, bucket) = judged[i];
        Some(Onset {
            at,
            // Within its second (a second over its limit has a bad or slow answer).
            first: bucket.first(metric, limit, at).min(at as f64 + 1.0),
            metric,
            value: judged[i].1,
            baseline: m,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(shares: &[(u32, u32)]) -> BTreeMap<i64, Bucket> {
        shares
            .iter()
            .enumerate()
            .map(|(i, (n, bad))| {
                let mut b = Bucket::default();
                let t = 1000.0 + i as f64;
                for k in 0..*n {
                    // The bad answers come last in their second.
                    let at = t + f64::from(k) / f64::from(*n);
                    b.add(at, if k >= n - bad { 502 } else { 200 }, false, 5.0);
                }
                (1000 + i as i64, b)
            })
            .collect()
    }

    #[test]
    fn a_p99_onset_is_dated_by_its_first_slow_answer() {
        // 5 ms answers, then from second 1020.6 on 300 ms ones.
        let series: BTreeMap<i64, Bucket> = (0..30)
            .map(|i| {
                let mut b = Bucket::default();
                for k in 0..100 {
                    let t = 1000.0 + f64::from(i) + f64::from(k) / 100.0;
                    let slow = t >= 1020.6;
                    b.add(t, 200, false, if slow { 300.0 } else { 5.0 });
                }
                (1000 + i64::from(i), b)
            })
            .collect();
        let o = onset(&series, Metric::P99).expect("onset");
        assert_eq!(o.at, 1020);
        assert!((o.first - 1020.6).abs() < 1e-3, "{o:?}");
    }

    #[test]
    fn a_steady_background_is_not_an_onset_and_a_jump_is() {
        // 4 % background for 20 s, then 30 % from second 20.
        let mut s: Vec<(u32, u32)> = (0..20).map(|i| (100, 3 + (i % 3))).collect();
        s.extend((0..10).map(|_| (100, 30)));
        let o = onset(&series(&s), Metric::Non2xx).expect("onset");
        assert_eq!(o.at, 1020);
        // Dated by its first bad answer: 70 of 100 good ones came first.
        assert!((o.first - 1020.7).abs() < 1e-9, "{o:?}");
        assert!((o.baseline - 0.04).abs() < 0.011, "{o:?}");
        let quiet: Vec<(u32, u32)> = (0..40).map(|i| (100, 3 + (i % 3))).collect();
        assert_eq!(onset(&series(&quiet), Metric::Non2xx), None);
    }

    #[test]
    fn one_bad_second_is_not_an_onset() {
        let mut s: Vec<(u32, u32)> = (0..20).map(|_| (100, 1)).collect();
        s.push((100, 50));
        s.extend((0..10).map(|_| (100, 1)));
        assert_eq!(onset(&series(&s), Metric::Non2xx), None);
    }

    #[test]
    fn p99_bins() {
        let mut b = Bucket::default();
        for _ in 0..99 {
            b.add(0.0, 200, false, 5.0);
        }
        b.add(0.0, 200, false, 5000.0);
        assert!((4.0..=8.0).contains(&b.p99()), "{}", b.p99());
        b.add(0.0, 200, false, 5000.0);
        assert!(b.p99() >= 4096.0, "{}", b.p99());
    }

    #[test]
    fn a_week_of_seconds_is_judged_in_linear_time() {
        // Seven days, every second judged (10 requests, 2 % bad, then a jump at the end):
        // with the window rescanned from the start this took hours.
        const WEEK: usize = 7 * 86_400;
        let mut shares = vec![(10, 0); WEEK];
        for (i, s) in shares.iter_mut().enumerate() {
            s.1 = u32::from(i % 50 == 0);
        }
        shares[WEEK - 3] = (10, 8);
        shares[WEEK - 2] = (10, 9);
        let s = series(&shares);
        let t0 = std::time::Instant::now();
        let o = onset(&s, Metric::Non2xx).expect("the jump is an onset");
        assert_eq!(o.at, 1000 + WEEK as i64 - 3);
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            t0.elapsed()
        );
    }
}
