//! CSV as hrk reads and writes it (dataset annotations, `--boxes`, predictions): one record per
//! line, LF or CRLF, RFC 4180 double quotes (`""` inside quotes is a quote), a leading UTF-8
//! byte-order mark skipped, blank lines skipped (as pandas does). A quoted field cannot span lines:
//! no file hrk reads needs it, and every error can then name `file:line`. Imports nothing from the
//! crate.

use anyhow::{anyhow, Result};
use std::borrow::Cow;

/// What `split_line` reports for a quote that is opened and never closed.
pub const UNTERMINATED_QUOTE: &str = "unterminated quoted field";

/// Splits one line (without its line ending) into fields.
pub fn split_line(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if in_quotes {
        return Err(UNTERMINATED_QUOTE);
    }
    fields.push(cur);
    Ok(fields)
}

/// The non-blank lines of `text` with their 1-based line numbers, line endings and a leading
/// byte-order mark removed.
pub fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// The fields of every non-blank line of `text` with its line number; a bad line is a one-line
/// error naming `source:line`.
pub fn records<'a>(text: &'a str, source: &'a str) -> impl Iterator<Item = Result<(usize, Vec<String>)>> + 'a {
    lines(text).map(move |(n, line)| split_line(line).map(|f| (n, f)).map_err(|e| anyhow!("{source}:{n}: {e}")))
}

/// One field for writing: quoted (quotes doubled) when it holds a comma, quote or line break.
pub fn field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_commas_and_doubled_quotes() {
        assert_eq!(split_line(r#""a,b.jpg",1,"2""x""#).unwrap(), ["a,b.jpg", "1", "2\"x"]);
        assert_eq!(split_line("a,,b,").unwrap(), ["a", "", "b", ""]);
        assert_eq!(split_line("").unwrap(), [""]);
        assert_eq!(split_line(r#""a,b"#), Err(UNTERMINATED_QUOTE));
    }

    #[test]
    fn lines_skip_blanks_bom_and_crlf() {
        let text = "\u{feff}h1,h2\r\n\r\n  \na,\"b\"\r\nc,d";
        let got: Vec<_> = records(text, "f.csv").map(Result::unwrap).collect();
        assert_eq!(
            got,
            [(1, vec!["h1".into(), "h2".into()]), (4, vec!["a".into(), "b".into()]), (5, vec!["c".into(), "d".into()])]
        );
        let e = records("x\n\"open,1\n", "f.csv").nth(1).unwrap().unwrap_err();
        assert_eq!(e.to_string(), "f.csv:2: unterminated quoted field");
    }

    #[test]
    fn written_fields_read_back() {
        for s in ["plain.jpg", "a,b.jpg", "say \"hi\".png", "two\nlines", ""] {
            assert_eq!(field(s).len() == s.len(), !s.contains([',', '"', '\n']));
            if !s.contains('\n') {
                assert_eq!(split_line(&field(s)).unwrap(), [s]);
            }
        }
    }
}
