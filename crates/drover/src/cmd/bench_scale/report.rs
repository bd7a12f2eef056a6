//! The one table `bench scale` prints: rows added as the run reaches them, printed at the end as
//! markdown (so it pastes into docs/benchmarks.md), also when the run was cut short.

use std::fmt::Write as _;
use std::time::Duration;

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The figure.
    pub value: String,
    /// A ratio or remark.
    pub note: String,
}

/// The rows so far, with the line above the table.
#[derive(Debug, Default)]
pub struct Report {
    /// A sentence saying what ran (sizes, which etcd).
    pub title: String,
    rows: Vec<Row>,
}

impl Report {
    /// An empty report under `title`.
    pub fn new(title: String) -> Report {
        Report {
            title,
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(
        &mut self,
        what: impl Into<String>,
        value: impl Into<String>,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            what: what.into(),
            value: value.into(),
            note: note.into(),
        });
    }

    /// The title line, a blank line and the markdown table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.title.is_empty() {
            let _ = writeln!(out, "{}\n", self.title);
        }
        out.push_str("| what | value | note |\n|---|---|---|\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cell(&row.what),
                cell(&row.value),
                cell(&row.note)
            );
        }
        out
    }
}

/// A cell's text with the characters that would break a markdown row escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `1,234` for counts.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `12,345/s` for rates.
pub fn per_second(rate: f64) -> String {
    format!("{}/s", count(rate.round().max(0.0) as u64))
}

/// `850 ms` below a second, `12.34 s` from a second on.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// `1.23x` for ratios.
pub fn ratio(value: f64, to: f64) -> String {
    if to > 0.0 {
        format!("{:.2}x", value / to)
    } else {
        "—".to_string()
    }
}

/// `123.4 MiB` for memory given in KiB.
pub fn kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `56.0 KiB`, `123.4 MiB` or `2.50 GiB` for bytes.
pub fn bytes(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    const KIB: f64 = 1024.0;
    if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_the_docs() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(per_second(2857.6), "2,858/s");
        assert_eq!(duration(Duration::from_millis(512)), "512 ms");
        assert_eq!(duration(Duration::from_millis(4030)), "4.03 s");
        assert_eq!(ratio(1.0, 4.0), "0.25x");
        assert_eq!(ratio(1.0, 0.0), "—");
        assert_eq!(kib(60_416), "59.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(bytes(57_344), "56.0 KiB");
        assert_eq!(bytes(5 << 29), "2.50 GiB");
    }

    #[test]
    fn renders_one_markdown_table() {
        let mut report = Report::new("a run".into());
        report.row("a|b", "1", "");
        report.row("c", "2 s", "0.50x");
        assert_eq!(
            report.render(),
            "a run\n\n| what | value | note |\n|---|---|---|\n| a\\|b | 1 |  |\n| c | 2 s | 0.50x |\n"
        );
    }
}
