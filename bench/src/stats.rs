//! Medians and tails.

/// n, median, p99, max (and min, mean) of a set of samples.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(mut v: Vec<f64>) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let pct = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Summary {
            n: v.len(),
            min: v[0],
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n, "min": self.min, "p50": self.p50, "p90": self.p90,
            "p99": self.p99, "max": self.max, "mean": round(self.mean, 1),
        })
    }
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// µs as a short human figure: 812 us, 1.43 ms, 2.10 s.
pub fn us(x: f64) -> String {
    if x < 1000.0 {
        format!("{x:.0} us")
    } else if x < 1_000_000.0 {
        format!("{:.2} ms", x / 1000.0)
    } else {
        format!("{:.2} s", x / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = Summary::of((1..=100).map(f64::from).collect());
        assert_eq!((s.p50, s.p99, s.max, s.n), (50.0, 99.0, 100.0, 100));
        let s = Summary::of(vec![3.0]);
        assert_eq!((s.p50, s.p99), (3.0, 3.0));
    }
}
