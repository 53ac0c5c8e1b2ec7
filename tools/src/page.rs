//! A self-contained HTML page: sections of escaped text, tables and
//! pictures, with nothing outside the file (`lml report`).
//!
//! # What the page may hold
//! * Text from users (job ids, class names, paths, error messages) only
//!   through [`escape`]: every builder here escapes what it is given, so a
//!   class named `<b>&` shows as those characters, never as markup.
//! * Pictures inline: a PNG as a `data:image/png;base64,…` URI, an SVG drawn
//!   by `plotters` as an inline `<svg>` element (plotters escapes the text it
//!   places). No `src` or `href` names another file or a server, so the page
//!   opens the same anywhere, offline, and can be mailed as one file.
//! * One `<style>` block; no script.

use std::path::Path;

use crate::pictures::{base64, Format, Picture};

/// HTML with `&`, `<`, `>`, `"` and `'` escaped: safe in text and in quoted
/// attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A paragraph of text.
pub fn para(text: &str) -> String {
    format!("<p>{}</p>\n", escape(text))
}

/// A paragraph saying why a section has nothing to show.
pub fn missing(text: &str) -> String {
    format!("<p class=\"missing\">{}</p>\n", escape(text))
}

/// Preformatted text (one line per line).
pub fn pre(text: &str) -> String {
    format!("<pre>{}</pre>\n", escape(text))
}

/// A two-column table of `(name, value)` facts.
pub fn facts(rows: &[(&str, String)]) -> String {
    let mut s = String::from("<table class=\"facts\">\n");
    for (k, v) in rows {
        s += &format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(k), escape(v));
    }
    s + "</table>\n"
}

/// A table with a header row; every cell is text.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table>\n<tr>");
    for h in header {
        s += &format!("<th>{}</th>", escape(h));
    }
    s += "</tr>\n";
    for row in rows {
        s += "<tr>";
        for c in row {
            s += &format!("<td>{}</td>", escape(c));
        }
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// A picture inside the page: a PNG as a `data:` URI `<img>`, an SVG as an
/// inline `<svg>` element (its XML declaration, if any, dropped). `alt` is
/// the PNG's alternative text.
pub fn picture(p: &Picture, alt: &str) -> String {
    match p.format {
        Format::Png => format!(
            "<figure><img src=\"data:image/png;base64,{}\" width=\"{}\" height=\"{}\" alt=\"{}\"></figure>\n",
            base64(&p.bytes),
            p.size.0,
            p.size.1,
            escape(alt)
        ),
        Format::Svg => {
            let text = String::from_utf8_lossy(&p.bytes);
            let body = match text.find("<svg") {
                Some(i) => &text[i..],
                None => &text[..],
            };
            format!("<figure>{body}</figure>\n")
        }
    }
}

/// One section: an anchor id, a heading and its HTML body (built with the
/// functions of this module).
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    /// The element id (a fixed word: `spec`, `timings`, …).
    pub id: &'static str,
    pub heading: String,
    pub body: String,
}

/// A page: a title and its sections, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    pub title: String,
    pub sections: Vec<Section>,
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1100px;color:#222;background:#fff}\
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.2em .6em;text-align:left}\
th{background:#f4f4f4}table.facts th{width:14em}pre{background:#f8f8f8;padding:.6em;overflow-x:auto;font-size:.85em}\
figure{margin:.5em 0}figure img,figure svg{max-width:100%;height:auto}.missing{color:#a33;font-style:italic}\
nav a{margin-right:1em}";

impl Page {
    /// The page as one HTML document.
    pub fn render(&self) -> String {
        let title = escape(&self.title);
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<nav>"
        );
        for sec in &self.sections {
            s += &format!("<a href=\"#{}\">{}</a>", sec.id, escape(&sec.heading));
        }
        s += "</nav>\n";
        for sec in &self.sections {
            s += &format!("<section id=\"{}\">\n<h2>{}</h2>\n{}</section>\n", sec.id, escape(&sec.heading), sec.body);
        }
        s + "</body>\n</html>\n"
    }

    /// Publishes the page at `path`: written to a temporary file beside it,
    /// fsynced and renamed, so no half-written page is ever there. Creates
    /// the parent folder.
    ///
    /// # Errors
    /// [`lml_kernel::KernelError::Io`] naming `path`.
    pub fn write(&self, path: &Path) -> Result<(), lml_kernel::KernelError> {
        let html = self.render();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| lml_kernel::KernelError::Io { path: dir.to_path_buf(), source })?;
        }
        lml_kernel::npy::publish_atomic(path, |w| std::io::Write::write_all(w, html.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere() {
        assert_eq!(escape(r#"<b>&"x"'"#), "&lt;b&gt;&amp;&quot;x&quot;&#39;");
        let page = Page {
            title: "job <i>".into(),
            sections: vec![Section {
                id: "spec",
                heading: "a & b".into(),
                body: facts(&[("class", "<b>&".into())]) + &table(&["<h>"], &[vec!["<c>".into()]]) + &pre("<p>"),
            }],
        };
        let html = page.render();
        for raw in ["<i>", "<b>&", "<h>", "<c>", "<p>"] {
            assert!(!html.contains(raw), "{raw} unescaped in\n{html}");
        }
        assert!(html.contains("&lt;b&gt;&amp;") && html.contains("a &amp; b"), "{html}");
    }

    #[test]
    fn pictures_are_embedded() {
        let png = Picture { format: Format::Png, size: (2, 3), bytes: b"abc".to_vec() };
        assert_eq!(
            picture(&png, "x\"y"),
            "<figure><img src=\"data:image/png;base64,YWJj\" width=\"2\" height=\"3\" alt=\"x&quot;y\"></figure>\n"
        );
        let svg =
            Picture { format: Format::Svg, size: (1, 1), bytes: b"<?xml version=\"1.0\"?>\n<svg></svg>".to_vec() };
        assert_eq!(picture(&svg, ""), "<figure><svg></svg></figure>\n");
    }
}
