//! A results table, printed as aligned text, markdown or CSV.

/// A table: a title, column headers, rows of cells, and notes saying what
/// was measured, scaled or assumed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    /// A table with `columns` and no rows.
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Table { title: title.into(), columns: columns.iter().map(|c| c.to_string()).collect(), ..Table::default() }
    }

    /// Adds a row; a missing cell is empty, an extra one is a bug.
    ///
    /// # Panics
    /// If the row has more cells than the table has columns.
    pub fn row(&mut self, cells: Vec<String>) {
        assert!(cells.len() <= self.columns.len(), "row of {} cells for {} columns", cells.len(), self.columns.len());
        let mut cells = cells;
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as GitHub markdown: a bold title line, the table, the notes as a list.
    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!("**{}**\n\n", self.title);
        out.push_str(&format!("| {} |\n", self.columns.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(self.columns.len())));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("* {n}\n"));
            }
        }
        out
    }

    /// The table as CSV (RFC 4180 quoting), header first; the title and notes are left out.
    pub fn csv(&self) -> String {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let line = |cells: &[String]| cells.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n";
        let mut out = line(&self.columns);
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// The table as text with aligned columns, for a terminal.
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.columns[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.columns));
        out.push_str(&format!("{}\n", widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  ")));
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("  {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_has_every_cell() {
        let mut t = Table::new("T", &["a", "b|c"]);
        t.row(vec!["1".into(), "x, \"y\"".into()]);
        t.row(vec!["22".into()]);
        t.notes.push("scaled".into());
        assert_eq!(t.markdown(), "**T**\n\n| a | b\\|c |\n|---|---|\n| 1 | x, \"y\" |\n| 22 |  |\n\n* scaled\n");
        assert_eq!(t.csv(), "a,b|c\n1,\"x, \"\"y\"\"\"\n22,\n");
        assert_eq!(t.text(), "T\na   b|c\n--  ------\n1   x, \"y\"\n22\n  scaled\n");
    }
}
