//! Output formatting shared by the read verbs: kubectl-style tables, JSON and YAML, `-o name`
//! and `-o jsonpath=...`, and short ages ("5s", "3m", "2h", "4d").

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::exit::{CliError, CliResult};
use crate::jsonpath::Template;

/// How `get` prints what it found (`-o`).
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// An aligned table with the most useful columns.
    Table,
    /// The table with more columns.
    Wide,
    /// A JSON `List` of the objects, each with its `status` (round-trips through `apply`).
    Json,
    /// A YAML document per object.
    Yaml,
    /// `KIND/NAME`, one per line.
    Name,
    /// kubectl's `jsonpath=TEMPLATE`, over the `List` that `-o json` prints.
    JsonPath(Template),
}

impl Format {
    /// Parses `-o`'s value: `table`, `wide`, `json`, `yaml`, `name` or `jsonpath=TEMPLATE`.
    pub fn parse(text: &str) -> Result<Format, String> {
        if let Some(template) = text
            .strip_prefix("jsonpath=")
            .or_else(|| text.strip_prefix("jsonpath-as-json="))
        {
            return Template::parse(template)
                .map(Format::JsonPath)
                .map_err(|error| error.to_string());
        }
        match text {
            "table" => Ok(Format::Table),
            "wide" => Ok(Format::Wide),
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            "name" => Ok(Format::Name),
            "jsonpath" => Err("jsonpath needs a template: -o jsonpath='{.items[*].metadata.name}'".into()),
            other => Err(format!(
                "unknown output format {other:?} (expected table, wide, json, yaml, name or jsonpath=TEMPLATE)"
            )),
        }
    }

    /// Whether the output is a table (`table` or `wide`).
    pub fn is_table(&self) -> bool {
        matches!(self, Format::Table | Format::Wide)
    }
}

/// What one listing prints, in every format: the table, the objects (JSON, YAML, jsonpath)
/// and their `KIND/NAME` (`-o name`).
#[derive(Debug, Default)]
pub struct Listing {
    /// The table, for `table` and `wide`.
    pub table: Table,
    /// The objects, for `json`, `yaml` and `jsonpath`.
    pub objects: Vec<Value>,
    /// `KIND/NAME` of each object, for `name`.
    pub names: Vec<String>,
}

impl Listing {
    /// The listing in `format`; an empty table prints nothing.
    pub fn render(&self, format: &Format) -> CliResult<String> {
        match format {
            Format::Json => to_json(&self.objects),
            Format::Yaml => to_yaml(&self.objects),
            Format::Name => Ok(self.names.iter().map(|n| format!("{n}\n")).collect()),
            Format::JsonPath(template) => {
                let list = serde_json::to_value(drover_api::manifest::List::new(
                    self.objects.iter().collect(),
                ))
                .map_err(|error| CliError::failure(format!("cannot encode JSON: {error}")))?;
                Ok(template.render(&list))
            }
            Format::Table | Format::Wide if self.table.is_empty() => Ok(String::new()),
            Format::Table | Format::Wide => Ok(self.table.render()),
        }
    }
}

/// A table: column headers and rows of cells, printed with columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: Vec<&'static str>) -> Self {
        Self {
            headers,
            rows: Vec::new(),
        }
    }

    /// Adds a column at the end (for `--show-labels`).
    pub fn add_column(&mut self, header: &'static str) {
        self.headers.push(header);
    }

    /// Adds one row; missing cells print empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, with a header line first.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for line in std::iter::once(&header).chain(self.rows.iter()) {
            out.push_str(&render_line(line, &widths));
            out.push('\n');
        }
        out
    }

    /// Renders only the rows, without the header line, for `get -w` after the first screen.
    /// Columns are padded to at least 12 characters so successive lines mostly align.
    pub fn render_rows(&self) -> String {
        let widths: Vec<usize> = self.headers.iter().map(|h| h.len().max(12)).collect();
        self.rows
            .iter()
            .map(|row| render_line(row, &widths) + "\n")
            .collect()
    }
}

fn render_line(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, width) in widths.iter().enumerate() {
        let cell = cells.get(i).map(String::as_str).unwrap_or("");
        if i + 1 == widths.len() {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$}   "));
        }
    }
    line.trim_end().to_string()
}

/// Serialises `items` as a pretty JSON `List` document (kubectl's shape), which `apply` accepts.
pub fn to_json<T: Serialize>(items: &[T]) -> CliResult<String> {
    serde_json::to_string_pretty(&drover_api::manifest::List::new(items.iter().collect()))
        .map(|text| text + "\n")
        .map_err(|error| CliError::failure(format!("cannot encode JSON: {error}")))
}

/// Serialises `items` as YAML documents separated by `---`.
pub fn to_yaml<T: Serialize>(items: &[T]) -> CliResult<String> {
    let mut out = String::new();
    for item in items {
        let text = serde_saphyr::to_string(item)
            .map_err(|error| CliError::failure(format!("cannot encode YAML: {error}")))?;
        out.push_str("---\n");
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// How long ago `time` was, in the largest whole unit ("42s", "7m", "3h", "12d").
pub fn age(time: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(time) = time else {
        return "<unknown>".to_string();
    };
    let seconds = (now - time).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A map as `k=v,k=v`, or `<none>`.
pub fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "<none>".to_string();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let mut table = Table::new(vec!["NAME", "PHASE"]);
        table.row(vec!["a-long-name".into(), "Running".into()]);
        table.row(vec!["b".into(), "Pending".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME          PHASE");
        assert_eq!(lines[1], "a-long-name   Running");
        assert_eq!(lines[2], "b             Pending");
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now = Utc::now();
        assert_eq!(age(Some(now - chrono::Duration::seconds(5)), now), "5s");
        assert_eq!(age(Some(now - chrono::Duration::seconds(600)), now), "10m");
        assert_eq!(age(Some(now - chrono::Duration::hours(5)), now), "5h");
        assert_eq!(age(Some(now - chrono::Duration::days(3)), now), "3d");
        assert_eq!(age(None, now), "<unknown>");
    }
}
