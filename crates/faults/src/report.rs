//! The reliability table: one row per scenario, from the `FIGURES` lines the scenarios append
//! to `$DROVER_FAULT_FIGURES` (JSON objects, one per line), as `docs/reliability.md` shows it.

use serde_json::Value;

/// A figures line that could not be used, with its line number.
#[derive(Debug, thiserror::Error)]
#[error("figures line {line}: {reason}")]
pub struct BadLine {
    /// 1-based.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The markdown table of `jsonl`'s figures, in the order the scenarios ran.
pub fn table(jsonl: &str) -> Result<String, BadLine> {
    let mut out = String::from(
        "| scenario | faults | overlaps (longest) | gaps | gap p50 / p99 (× lease TTL) | job runs | lost / doubled / stuck | failed / redone | converged after | load commands (failed) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, text) in jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |reason: String| BadLine {
            line: i + 1,
            reason,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let int = |field: &str| -> Result<Option<i64>, BadLine> {
            match &v[field] {
                Value::Null => Ok(None),
                n => n
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("{field} is not an integer: {n}"))),
            }
        };
        let need = |field: &str| int(field)?.ok_or_else(|| bad(format!("{field} is missing")));
        let scenario = v["scenario"]
            .as_str()
            .ok_or_else(|| bad("scenario is missing".into()))?;
        let ttl = need("leaseTtlMs")?.max(1);
        let gap = |ms: Option<i64>| {
            ms.map_or_else(
                || "—".to_string(),
                |ms| format!("{ms} ms ({:.2})", ms as f64 / ttl as f64),
            )
        };
        let converged =
            int("convergedMs")?.map_or_else(|| "**stuck**".to_string(), |ms| format!("{ms} ms"));
        out.push_str(&format!(
            "| {scenario} | {} | {} ({} ms) | {} | {} / {} | {} | {} / {} / {} | {} / {} | {converged} | {} ({}) |\n",
            need("rounds")?,
            need("overlaps")?,
            need("longestOverlapMs")?,
            need("gaps")?,
            gap(int("gapP50Ms")?),
            gap(int("gapP99Ms")?),
            need("jobRuns")?,
            need("runsLost")?,
            need("runsDoubled")?,
            need("stuckRuns")?,
            need("runsFailed")?,
            need("runsRedone")?,
            need("commands")?,
            need("commandsFailed")?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"commands":5,"commandsFailed":1,"convergedMs":78,"gapP50Ms":9443,"gapP99Ms":10000,"gaps":2,"jobRuns":3,"leaseTtlMs":10000,"longestOverlapMs":0,"overlaps":0,"rounds":1,"runsDoubled":0,"runsFailed":0,"runsLost":0,"runsRedone":1,"scenario":"1 agent host killed","stuckRuns":0}"#;

    #[test]
    fn a_row_per_line_with_gaps_against_the_ttl() {
        let t = table(&format!("{LINE}\n\n{LINE}\n")).unwrap();
        assert_eq!(t.lines().count(), 4);
        assert!(
            t.contains("| 1 agent host killed | 1 | 0 (0 ms) | 2 | 9443 ms (0.94) / 10000 ms (1.00) | 3 | 0 / 0 / 0 | 0 / 1 | 78 ms | 5 (1) |"),
            "{t}"
        );
    }

    #[test]
    fn no_gap_and_no_convergence_are_shown_as_such() {
        let line = LINE
            .replace(r#""gapP50Ms":9443"#, r#""gapP50Ms":null"#)
            .replace(r#""convergedMs":78"#, r#""convergedMs":null"#);
        let t = table(&line).unwrap();
        assert!(t.contains("| — / 10000 ms (1.00) |"), "{t}");
        assert!(t.contains("**stuck**"), "{t}");
    }

    #[test]
    fn a_bad_line_is_named_by_number_and_field() {
        let err = table(&format!("{LINE}\n{}", LINE.replace(r#""rounds":1,"#, ""))).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("rounds"), "{err}");
        let err = table("not json").unwrap_err();
        assert_eq!(err.line, 1);
    }
}
