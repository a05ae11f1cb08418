//! A small re-implementation of Python's `ast.literal_eval`, as far as yacs needs it.
//!
//! yacs passes every string value read from a YAML file through `literal_eval` and keeps the
//! string when that raises `ValueError`/`SyntaxError`. So `GPUS: (0, )` becomes a tuple and
//! `LR: '1e-4'` a float, while `DATASET: 300W` stays a string. `literal_eval` returns `None`
//! here exactly where Python would raise one of those two errors (within the subset of literal
//! syntax handled: numbers, strings, bytes, True/False/None, tuples, lists, dicts, sets,
//! complex numbers and `...`).

/// A Python value as yacs would see it after decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum PyVal {
    None,
    Bool(bool),
    /// A Python int; `None` when it does not fit an i64 (Python ints are unbounded).
    Int(Option<i64>),
    Float(f64),
    Str(String),
    List(Vec<PyVal>),
    Tuple(Vec<PyVal>),
    /// A value of a type the config never accepts (dict, set, bytes, complex, Ellipsis);
    /// only its Python type name is kept, for error messages.
    Other(&'static str),
}

impl PyVal {
    /// The Python type name, as yacs' "Type mismatch" message would show it.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyVal::None => "None",
            PyVal::Bool(_) => "bool",
            PyVal::Int(_) => "int",
            PyVal::Float(_) => "float",
            PyVal::Str(_) => "str",
            PyVal::List(_) => "list",
            PyVal::Tuple(_) => "tuple",
            PyVal::Other(name) => name,
        }
    }
}

/// How an expression was built; `literal_eval` only allows a sign in front of a bare number
/// constant and `a ± b` only with a signed real on the left and a bare imaginary on the right.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Constant,
    Signed,
    Compound,
}

const MAX_NESTING: usize = 100;

/// `ast.literal_eval(text)`, or `None` where Python raises ValueError / SyntaxError.
pub fn literal_eval(text: &str) -> Option<PyVal> {
    let mut parser = Parser { chars: text.chars().collect(), pos: 0, depth: 0 };
    parser.skip_space();
    let (value, _) = parser.expression()?;
    parser.skip_space();
    if parser.pos == parser.chars.len() {
        Some(value)
    } else {
        None
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\n' | '\r' | '\x0c' => self.pos += 1,
                '\\' if self.peek_at(1) == Some('\n') => self.pos += 2,
                '#' => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn expression(&mut self) -> Option<(PyVal, Form)> {
        let (left, left_form) = self.signed()?;
        self.skip_space();
        if !matches!(self.peek(), Some('+' | '-')) {
            return Some((left, left_form));
        }
        // Only `real ± imaginary` (a complex literal) is accepted by literal_eval.
        self.pos += 1;
        self.skip_space();
        let (right, right_form) = self.atom()?;
        let left_is_real = matches!(left, PyVal::Int(_) | PyVal::Float(_)) && left_form != Form::Compound;
        let right_is_imaginary = right == PyVal::Other("complex") && right_form == Form::Constant;
        if left_is_real && right_is_imaginary {
            Some((PyVal::Other("complex"), Form::Compound))
        } else {
            None
        }
    }

    fn signed(&mut self) -> Option<(PyVal, Form)> {
        let negative = match self.peek() {
            Some('+') => false,
            Some('-') => true,
            _ => return self.atom(),
        };
        self.pos += 1;
        self.skip_space();
        let (value, form) = self.atom()?;
        if form != Form::Constant {
            return None;
        }
        let value = match value {
            PyVal::Int(v) if negative => PyVal::Int(v.and_then(|v| v.checked_neg())),
            PyVal::Float(v) if negative => PyVal::Float(-v),
            v @ (PyVal::Int(_) | PyVal::Float(_)) => v,
            PyVal::Other("complex") => PyVal::Other("complex"),
            _ => return None,
        };
        Some((value, Form::Signed))
    }

    fn atom(&mut self) -> Option<(PyVal, Form)> {
        let c = self.peek()?;
        match c {
            '(' | '[' | '{' => {
                if self.depth >= MAX_NESTING {
                    return None;
                }
                self.depth += 1;
                let result = match c {
                    '(' => self.parenthesized(),
                    '[' => self.list(),
                    _ => self.braces(),
                };
                self.depth -= 1;
                result
            }
            '.' if self.peek_at(1) == Some('.') && self.peek_at(2) == Some('.') => {
                self.pos += 3;
                Some((PyVal::Other("ellipsis"), Form::Constant))
            }
            '.' if self.peek_at(1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
            '0'..='9' => self.number(),
            '\'' | '"' => self.strings(),
            c if is_ident_start(c) => {
                if self.string_prefix_len().is_some() {
                    return self.strings();
                }
                let start = self.pos;
                while self.peek().is_some_and(is_ident_char) {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                let value = match name.as_str() {
                    "True" => PyVal::Bool(true),
                    "False" => PyVal::Bool(false),
                    "None" => PyVal::None,
                    _ => return None,
                };
                Some((value, Form::Constant))
            }
            _ => None,
        }
    }

    /// Comma-separated expressions up to `close`; returns the items and whether a comma was seen.
    fn items(&mut self, close: char) -> Option<(Vec<PyVal>, bool)> {
        let mut items = Vec::new();
        let mut saw_comma = false;
        loop {
            self.skip_space();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Some((items, saw_comma));
            }
            let (item, _) = self.expression()?;
            items.push(item);
            self.skip_space();
            match self.peek()? {
                ',' => {
                    saw_comma = true;
                    self.pos += 1;
                }
                c if c == close => {
                    self.pos += 1;
                    return Some((items, saw_comma));
                }
                _ => return None,
            }
        }
    }

    fn parenthesized(&mut self) -> Option<(PyVal, Form)> {
        self.pos += 1;
        self.skip_space();
        if self.peek() == Some(')') {
            self.pos += 1;
            return Some((PyVal::Tuple(Vec::new()), Form::Compound));
        }
        let (first, form) = self.expression()?;
        self.skip_space();
        if self.peek() == Some(')') {
            // `(x)` is just x, with x's own form: `-(1)` is still a signed constant.
            self.pos += 1;
            return Some((first, form));
        }
        if self.peek() != Some(',') {
            return None;
        }
        self.pos += 1;
        let (rest, _) = self.items(')')?;
        let mut all = vec![first];
        all.extend(rest);
        Some((PyVal::Tuple(all), Form::Compound))
    }

    fn list(&mut self) -> Option<(PyVal, Form)> {
        self.pos += 1;
        let (items, _) = self.items(']')?;
        Some((PyVal::List(items), Form::Compound))
    }

    fn braces(&mut self) -> Option<(PyVal, Form)> {
        self.pos += 1;
        self.skip_space();
        if self.peek() == Some('}') {
            self.pos += 1;
            return Some((PyVal::Other("dict"), Form::Compound));
        }
        self.expression()?;
        self.skip_space();
        if self.peek() == Some(':') {
            self.pos += 1;
            self.skip_space();
            self.expression()?;
            loop {
                self.skip_space();
                match self.peek()? {
                    '}' => {
                        self.pos += 1;
                        return Some((PyVal::Other("dict"), Form::Compound));
                    }
                    ',' => {
                        self.pos += 1;
                        self.skip_space();
                        if self.peek() == Some('}') {
                            continue;
                        }
                        self.expression()?;
                        self.skip_space();
                        if self.peek() != Some(':') {
                            return None;
                        }
                        self.pos += 1;
                        self.skip_space();
                        self.expression()?;
                    }
                    _ => return None,
                }
            }
        }
        match self.peek()? {
            '}' => self.pos += 1,
            ',' => {
                self.pos += 1;
                self.items('}')?;
            }
            _ => return None,
        }
        Some((PyVal::Other("set"), Form::Compound))
    }

    fn digits_with_underscores(&mut self, radix: u32) -> Option<String> {
        // Python allows single underscores between digits only.
        let mut out = String::new();
        let mut last_was_digit = false;
        while let Some(c) = self.peek() {
            if c.is_digit(radix) {
                out.push(c);
                last_was_digit = true;
                self.pos += 1;
            } else if c == '_' && last_was_digit && self.peek_at(1).is_some_and(|d| d.is_digit(radix)) {
                last_was_digit = false;
                self.pos += 1;
            } else {
                break;
            }
        }
        if out.is_empty() {
            None
        } else {
            Some(out)
        }
    }

    fn number(&mut self) -> Option<(PyVal, Form)> {
        let radix = match (self.peek(), self.peek_at(1)) {
            (Some('0'), Some('x' | 'X')) => 16,
            (Some('0'), Some('o' | 'O')) => 8,
            (Some('0'), Some('b' | 'B')) => 2,
            _ => 10,
        };
        if radix != 10 {
            self.pos += 2;
            if self.peek() == Some('_') {
                self.pos += 1;
            }
            let digits = self.digits_with_underscores(radix)?;
            if self.peek().is_some_and(is_ident_char) {
                return None;
            }
            return Some((PyVal::Int(i64::from_str_radix(&digits, radix).ok()), Form::Constant));
        }
        let int_part = if self.peek() == Some('.') { String::new() } else { self.digits_with_underscores(10)? };
        let mut is_float = false;
        let mut text = int_part.clone();
        if self.peek() == Some('.') {
            is_float = true;
            self.pos += 1;
            text.push('.');
            if self.peek().is_some_and(|d| d.is_ascii_digit()) {
                text.push_str(&self.digits_with_underscores(10)?);
            } else if int_part.is_empty() {
                return None;
            }
        }
        if let Some('e' | 'E') = self.peek() {
            let save = self.pos;
            self.pos += 1;
            let mut exponent = String::from("e");
            if let Some(sign @ ('+' | '-')) = self.peek() {
                exponent.push(sign);
                self.pos += 1;
            }
            match self.digits_with_underscores(10) {
                Some(d) => {
                    exponent.push_str(&d);
                    text.push_str(&exponent);
                    is_float = true;
                }
                None => {
                    self.pos = save;
                    return None;
                }
            }
        }
        if let Some('j' | 'J') = self.peek() {
            self.pos += 1;
            if self.peek().is_some_and(is_ident_char) {
                return None;
            }
            return Some((PyVal::Other("complex"), Form::Constant));
        }
        if self.peek().is_some_and(is_ident_char) {
            return None;
        }
        if is_float {
            return Some((PyVal::Float(text.parse::<f64>().ok()?), Form::Constant));
        }
        // "012" is a SyntaxError in Python 3; "000" is fine.
        if int_part.len() > 1 && int_part.starts_with('0') && int_part.chars().any(|c| c != '0') {
            return None;
        }
        Some((PyVal::Int(int_part.parse::<i64>().ok()), Form::Constant))
    }

    /// Length of a string prefix (r, b, u, f and their valid pairs) right before a quote.
    fn string_prefix_len(&self) -> Option<usize> {
        for len in [2usize, 1] {
            let prefix: String = (0..len).filter_map(|i| self.peek_at(i)).collect::<String>().to_ascii_lowercase();
            if prefix.chars().count() != len {
                continue;
            }
            let valid = matches!(prefix.as_str(), "r" | "u" | "b" | "f" | "br" | "rb" | "fr" | "rf");
            if valid && matches!(self.peek_at(len), Some('\'' | '"')) {
                return Some(len);
            }
        }
        None
    }

    /// One or more adjacent string literals (Python concatenates them).
    fn strings(&mut self) -> Option<(PyVal, Form)> {
        let mut text = String::new();
        let mut kind: Option<bool> = None; // Some(true) = bytes
        let mut formatted = false;
        loop {
            let prefix_len = self.string_prefix_len().unwrap_or(0);
            let prefix: String =
                self.chars[self.pos..self.pos + prefix_len].iter().collect::<String>().to_ascii_lowercase();
            self.pos += prefix_len;
            let is_bytes = prefix.contains('b');
            let is_raw = prefix.contains('r');
            formatted |= prefix.contains('f');
            if kind.is_some_and(|k| k != is_bytes) {
                return None; // mixing bytes and str is a SyntaxError
            }
            kind = Some(is_bytes);
            text.push_str(&self.one_string(is_raw, is_bytes)?);
            self.skip_space();
            match self.peek() {
                Some('\'' | '"') => continue,
                Some(c) if is_ident_start(c) && self.string_prefix_len().is_some() => continue,
                _ => break,
            }
        }
        if formatted {
            return None; // an f-string is a JoinedStr: literal_eval raises ValueError
        }
        if kind == Some(true) {
            return Some((PyVal::Other("bytes"), Form::Constant));
        }
        Some((PyVal::Str(text), Form::Constant))
    }

    fn one_string(&mut self, raw: bool, bytes: bool) -> Option<String> {
        let quote = self.peek()?;
        let triple = self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote);
        self.pos += if triple { 3 } else { 1 };
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            if c == quote {
                if !triple {
                    self.pos += 1;
                    return Some(out);
                }
                if self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote) {
                    self.pos += 3;
                    return Some(out);
                }
            }
            if c == '\n' && !triple {
                return None;
            }
            if bytes && !c.is_ascii() {
                return None;
            }
            if c != '\\' {
                out.push(c);
                self.pos += 1;
                continue;
            }
            let next = self.peek_at(1)?;
            if raw {
                // In a raw string a backslash only stops the next char from ending the string.
                out.push('\\');
                out.push(next);
                self.pos += 2;
                continue;
            }
            self.pos += 2;
            match next {
                '\n' => {}
                '\\' | '\'' | '"' => out.push(next),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '0'..='7' => {
                    let mut value = next.to_digit(8)?;
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                value = value * 8 + d;
                                self.pos += 1;
                            }
                            None => break,
                        }
                    }
                    out.push(char::from_u32(value)?);
                }
                'x' => out.push(self.hex_escape(2)?),
                'u' if !bytes => out.push(self.hex_escape(4)?),
                'U' if !bytes => out.push(self.hex_escape(8)?),
                // \N{NAME} needs the Unicode name table; treat it as unparseable.
                'N' if !bytes => return None,
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
    }

    fn hex_escape(&mut self, count: usize) -> Option<char> {
        let mut value: u32 = 0;
        for _ in 0..count {
            let d = self.peek()?.to_digit(16)?;
            value = value.checked_mul(16)?.checked_add(d)?;
            self.pos += 1;
        }
        char::from_u32(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_yacs_decodes() {
        assert_eq!(literal_eval("(0,)"), Some(PyVal::Tuple(vec![PyVal::Int(Some(0))])));
        assert_eq!(literal_eval("(0, )"), Some(PyVal::Tuple(vec![PyVal::Int(Some(0))])));
        assert_eq!(literal_eval("(0)"), Some(PyVal::Int(Some(0))));
        assert_eq!(literal_eval("[30, 50]"), Some(PyVal::List(vec![PyVal::Int(Some(30)), PyVal::Int(Some(50))])));
        assert_eq!(literal_eval("1e-4"), Some(PyVal::Float(1e-4)));
        assert_eq!(literal_eval("-1_000"), Some(PyVal::Int(Some(-1000))));
        assert_eq!(literal_eval("0x1F"), Some(PyVal::Int(Some(31))));
        assert_eq!(literal_eval("'adam'"), Some(PyVal::Str("adam".into())));
        assert_eq!(literal_eval("'a' \"b\""), Some(PyVal::Str("ab".into())));
        assert_eq!(literal_eval("True"), Some(PyVal::Bool(true)));
        assert_eq!(literal_eval("-(1)"), Some(PyVal::Int(Some(-1))));
        assert_eq!(literal_eval("1+2j"), Some(PyVal::Other("complex")));
        assert_eq!(literal_eval("{1: 2}"), Some(PyVal::Other("dict")));
        assert_eq!(literal_eval("{1, 2}"), Some(PyVal::Other("set")));
        assert_eq!(literal_eval("b'x'"), Some(PyVal::Other("bytes")));
        assert_eq!(literal_eval("99999999999999999999999"), Some(PyVal::Int(None)));
    }

    #[test]
    fn leaves_plain_text_alone() {
        for text in [
            "adam",
            "300W",
            "./data/wflw/images/",
            "",
            " ",
            "BASIC",
            "012",
            "1__0",
            "--1",
            "-True",
            "1+2",
            "f'x'",
            "a/b",
            "1 2",
            "(1,",
            "'abc",
            "1.e",
            "0x",
            "3W",
        ] {
            assert_eq!(literal_eval(text), None, "{text:?}");
        }
    }
}
