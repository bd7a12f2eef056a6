//! `drover diff -f FILE|DIR|-`: a unified diff, per task, of the stored Task against what
//! `apply` would write (YAML, `generation` as apply would set it). Exit 0: no difference, 1:
//! a difference was printed, above 1: an error (kubectl's and diff(1)'s convention). Nothing
//! is written.

use drover_api::task::Task;

use super::apply::parse_checked;
use super::{connect, store_error};
use crate::cli::{DiffArgs, Global};
use crate::exit::{CliError, CliResult, FAILURE};
use crate::input::read_sources;

/// Exit code of `diff` for an error that would otherwise be 1 (1 means "differs").
const ERROR: i32 = 2;

pub async fn run(global: &Global, args: DiffArgs) -> CliResult {
    let text = diff_all(global, &args).await.map_err(|error| {
        if error.exit_code() == FAILURE {
            CliError::new(ERROR, error.to_string())
        } else {
            error
        }
    })?;
    if text.is_empty() {
        return Ok(());
    }
    print!("{text}");
    Err(CliError::silent(FAILURE))
}

async fn diff_all(global: &Global, args: &DiffArgs) -> CliResult<String> {
    let sources = read_sources(&args.files)?;
    let tasks = parse_checked(&sources)?;
    let (store, keys) = connect(global).await?;
    let mut out = String::new();
    for task in tasks {
        let meta = &task.metadata;
        let key = keys.task(&meta.namespace, &meta.name);
        let raw = store
            .get_raw(&key)
            .await
            .map_err(|error| store_error(&format!("reading {key}"), error))?;
        let mut applied = task.clone();
        let stored_text = match raw {
            None => {
                applied.metadata.generation = 1;
                String::new()
            }
            Some(raw) => match serde_json::from_slice::<Task>(&raw.value) {
                Ok(stored) => {
                    applied.metadata.generation = stored.metadata.generation;
                    if applied == stored {
                        continue;
                    }
                    applied.metadata.generation += 1;
                    yaml(&stored)?
                }
                // A value another client wrote that is not a Task: shown as stored.
                Err(_) => {
                    let mut text = String::from_utf8_lossy(&raw.value).into_owned();
                    if !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text
                }
            },
        };
        out.push_str(&unified(
            &stored_text,
            &yaml(&applied)?,
            &format!("{key} (stored)"),
            &format!("{key} (applied)"),
        ));
    }
    Ok(out)
}

fn yaml(task: &Task) -> CliResult<String> {
    task.to_yaml()
        .map_err(|error| CliError::failure(error.to_string()))
}

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// One line of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Same(usize, usize),
    Delete(usize),
    Insert(usize),
}

/// The shortest edit script from `a` to `b` (longest common subsequence; tasks are a few
/// hundred lines at most, so the quadratic table is small).
fn edits(a: &[&str], b: &[&str]) -> Vec<Edit> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Edit::Same(i, j));
            i += 1;
            j += 1;
        // Deletions before insertions, as diff(1) prints a changed line.
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(Edit::Delete(i));
            i += 1;
        } else {
            out.push(Edit::Insert(j));
            j += 1;
        }
    }
    out
}

/// A unified diff of `old` and `new` (empty when they are equal).
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let script = edits(&a, &b);
    let changed: Vec<usize> = script
        .iter()
        .enumerate()
        .filter(|(_, e)| !matches!(e, Edit::Same(..)))
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    // Group changes whose contexts touch into hunks of the script.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &at in &changed {
        let start = at.saturating_sub(CONTEXT);
        let end = (at + CONTEXT + 1).min(script.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for (start, end) in hunks {
        let part = &script[start..end];
        // Where the hunk starts in each file: the first line it touches there.
        let old_start = script[..start]
            .iter()
            .filter(|e| !matches!(e, Edit::Insert(_)))
            .count();
        let new_start = script[..start]
            .iter()
            .filter(|e| !matches!(e, Edit::Delete(_)))
            .count();
        let old_len = part
            .iter()
            .filter(|e| !matches!(e, Edit::Insert(_)))
            .count();
        let new_len = part
            .iter()
            .filter(|e| !matches!(e, Edit::Delete(_)))
            .count();
        let range = |start: usize, len: usize| {
            if len == 0 {
                format!("{start},0")
            } else {
                format!("{},{len}", start + 1)
            }
        };
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(old_start, old_len),
            range(new_start, new_len)
        ));
        for edit in part {
            match *edit {
                Edit::Same(i, _) => out.push_str(&format!(" {}\n", a[i])),
                Edit::Delete(i) => out.push_str(&format!("-{}\n", a[i])),
                Edit::Insert(j) => out.push_str(&format!("+{}\n", b[j])),
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_changed_line_is_one_hunk_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        let diff = unified(old, new, "x (stored)", "x (applied)");
        assert_eq!(
            diff,
            "--- x (stored)\n+++ x (applied)\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(unified(old, old, "a", "b"), "");
        let created = unified("", "a\nb\n", "a", "b");
        assert!(created.contains("@@ -0,0 +1,2 @@\n+a\n+b\n"), "{created}");
    }

    /// Applies the `-`/`+` lines of a diff's body to `old`: what `patch` would do.
    fn patch(old: &str, script: &[Edit], b: &[&str]) -> String {
        let a: Vec<&str> = old.lines().collect();
        let mut out = String::new();
        for edit in script {
            match *edit {
                Edit::Same(i, _) => out.push_str(a[i]),
                Edit::Insert(j) => out.push_str(b[j]),
                Edit::Delete(_) => continue,
            }
            out.push('\n');
        }
        out
    }

    proptest! {
        /// The edit script turns the old text into the new one, and keeps a longest common
        /// part (it never deletes and re-inserts a line it could have kept in place).
        #[test]
        fn the_script_rebuilds_the_new_text(
            a in proptest::collection::vec("[abc]", 0..12),
            b in proptest::collection::vec("[abc]", 0..12),
        ) {
            let old: String = a.iter().map(|l| format!("{l}\n")).collect();
            let new: String = b.iter().map(|l| format!("{l}\n")).collect();
            let al: Vec<&str> = old.lines().collect();
            let bl: Vec<&str> = new.lines().collect();
            let script = edits(&al, &bl);
            prop_assert_eq!(patch(&old, &script, &bl), new.clone());
            let diff = unified(&old, &new, "a", "b");
            prop_assert_eq!(diff.is_empty(), old == new);
        }
    }
}
