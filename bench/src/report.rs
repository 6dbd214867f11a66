//! Percentiles, memory readings and the printed table.

use std::fmt::Write;
use std::time::Duration;

use crate::Scale;

/// Latency samples in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<u64>);

impl Samples {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many samples took longer than `limit`, and the slowest, in ms:
    /// whether a p99 comes from a few long stalls or from everything being
    /// slow.
    pub fn tail(&self, limit: Duration) -> (usize, f64) {
        let limit = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        let over = self.0.iter().filter(|&&ns| ns > limit).count();
        let slowest = self.0.iter().copied().max().unwrap_or(0);
        (over, slowest as f64 / 1e6)
    }

    /// The `p`-th percentile (nearest rank), in microseconds; NaN when empty.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1_000.0
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks (USER_HZ = 100
    // on Linux).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS (Linux ≥ 4.0).
pub fn reset_peak(pid: &str) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!("sotto-bench: cannot reset the peak RSS of {pid}: {e}");
    }
}

/// Whether a target holds.
#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    /// No target for this row.
    None,
    /// The target holds.
    Holds,
    /// The target does not hold.
    Misses,
}

impl Verdict {
    /// `Holds` if `ok`.
    pub fn of(ok: bool) -> Self {
        if ok {
            Self::Holds
        } else {
            Self::Misses
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    measure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: Verdict,
}

/// The table, built section by section.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    /// Adds a section heading.
    pub fn section(&mut self, title: &str) {
        self.rows.push(Row {
            measure: format!("[{title}]"),
            value: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: Verdict::None,
        });
    }

    /// Adds a row. `ratio` is value / baseline, already computed by the caller
    /// (its meaning depends on the row).
    pub fn row(
        &mut self,
        measure: &str,
        value: String,
        baseline: String,
        ratio: Option<f64>,
        target: &str,
        verdict: Verdict,
    ) {
        self.rows.push(Row {
            measure: measure.to_owned(),
            value,
            baseline,
            ratio: ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
            target: target.to_owned(),
            verdict,
        });
    }

    /// Adds a note printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as text.
    pub fn render(&self, scale: &Scale, took: Duration) -> String {
        let head = [
            "measure",
            "value",
            "baseline (same run)",
            "ratio",
            "target",
            "holds",
        ];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.measure.clone(),
                    r.value.clone(),
                    r.baseline.clone(),
                    r.ratio.clone(),
                    r.target.clone(),
                    match r.verdict {
                        Verdict::None => String::new(),
                        Verdict::Holds => "yes".into(),
                        Verdict::Misses => "NO".into(),
                    },
                ]
            })
            .collect();
        let mut width = head.map(|h| h.chars().count());
        for c in &cells {
            for (w, s) in width.iter_mut().zip(c) {
                *w = (*w).max(s.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sotto-bench{}: {} MiB file, {} s in all",
            if scale.quick { " --quick" } else { "" },
            scale.file_bytes >> 20,
            took.as_secs()
        );
        let line = |out: &mut String, c: &[String; 6]| {
            let mut l = String::new();
            for (i, (s, w)) in c.iter().zip(width).enumerate() {
                if i > 0 {
                    l.push_str(" | ");
                }
                // Figures right-aligned, words left-aligned.
                if (1..=3).contains(&i) {
                    let _ = write!(l, "{s:>w$}");
                } else {
                    let _ = write!(l, "{s:<w$}");
                }
            }
            let _ = writeln!(out, "{}", l.trim_end());
        };
        line(&mut out, &head.map(String::from));
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "{}", rule.join("-|-"));
        for c in &cells {
            line(&mut out, c);
        }
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        out
    }
}

/// Bytes per second as MB/s (10^6).
pub fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}
