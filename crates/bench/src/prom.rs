//! Reading the server's `/metrics` page (Prometheus text exposition): counters by label,
//! and histograms as cumulative buckets, from which a quantile is known only to lie
//! between two bucket bounds.

use anyhow::{Context, Result};
use serde::Serialize;

pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

pub struct Scrape(pub Vec<Sample>);

/// A histogram read back from its buckets.
#[derive(Serialize, Clone, Debug)]
pub struct Hist {
    pub count: u64,
    pub sum: f64,
    pub mean: Option<f64>,
    /// `(upper bound, cumulative count)`, ascending, ending with `+Inf`.
    #[serde(skip)]
    pub buckets: Vec<(f64, u64)>,
}

/// Where a quantile lies: above `lower` and at most `upper` (a bucket's bounds).
#[derive(Serialize, Clone, Copy, Debug)]
pub struct Bounds {
    pub lower: f64,
    /// `None` when the quantile is in the `+Inf` bucket.
    pub upper: Option<f64>,
}

impl Scrape {
    pub async fn fetch(http: &reqwest::Client, base: &str) -> Result<Scrape> {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .context("GET /metrics")?
            .error_for_status()
            .context("GET /metrics")?
            .text()
            .await
            .context("reading /metrics")?;
        Ok(Scrape::parse(&text))
    }

    pub fn parse(text: &str) -> Scrape {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            out.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Scrape(out)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// The sum of every series of `name` carrying `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Every series of `name`, by the value of label `label`.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        self.matching(name, &[])
            .filter_map(|s| {
                s.labels
                    .iter()
                    .find(|(k, _)| k == label)
                    .map(|(_, v)| (v.clone(), s.value))
            })
            .collect()
    }

    pub fn hist(&self, name: &str) -> Hist {
        let mut buckets: Vec<(f64, u64)> = self
            .matching(&format!("{name}_bucket"), &[])
            .filter_map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le")?.1.as_str();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, s.value as u64))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = self.sum(&format!("{name}_count"), &[]) as u64;
        let sum = self.sum(&format!("{name}_sum"), &[]);
        Hist {
            count,
            sum,
            mean: (count > 0).then(|| sum / count as f64),
            buckets,
        }
    }
}

impl Hist {
    /// The bucket holding quantile `q`, or `None` with no observations.
    pub fn quantile(&self, q: f64) -> Option<Bounds> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut lower = 0.0;
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                return Some(Bounds {
                    lower,
                    upper: le.is_finite().then_some(le),
                });
            }
            lower = le;
        }
        Some(Bounds { lower, upper: None })
    }
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Scrape;

    #[test]
    fn reads_counters_and_histogram_buckets() {
        let text = "# HELP x y\n\
            steadfast_breaks_total{rule=\"payment-bill\",kind=\"amount_mismatch\"} 3\n\
            steadfast_breaks_total{rule=\"payment-bill\",kind=\"missing_counterpart\"} 1\n\
            steadfast_lat_sum 0.5\n\
            steadfast_lat_count 100\n\
            steadfast_lat_bucket{le=\"0.001\"} 10\n\
            steadfast_lat_bucket{le=\"0.002\"} 98\n\
            steadfast_lat_bucket{le=\"0.004\"} 100\n\
            steadfast_lat_bucket{le=\"+Inf\"} 100\n\
            # EOF\n";
        let s = Scrape::parse(text);
        assert_eq!(
            s.sum("steadfast_breaks_total", &[("kind", "amount_mismatch")]),
            3.0
        );
        assert_eq!(s.sum("steadfast_breaks_total", &[]), 4.0);
        let h = s.hist("steadfast_lat");
        assert_eq!(h.count, 100);
        let p50 = h.quantile(0.5).unwrap();
        assert_eq!((p50.lower, p50.upper), (0.001, Some(0.002)));
        let p99 = h.quantile(0.99).unwrap();
        assert_eq!((p99.lower, p99.upper), (0.002, Some(0.004)));
    }
}
