//! The machinery behind the key tables of `config`: `config_section!` turns one table per section
//! into the struct, its `Default`, its schema rows, the assignment of checked values and the YAML
//! dump, so that each key is written exactly once. The leaf types say how a yacs value becomes
//! them and how they are written back.

use super::py_literal::literal_eval;
use super::{BlockKind, OptimizerKind};
use anyhow::{anyhow, bail, Result};
use std::fmt::Write as _;

/// The type yacs infers from each default value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Slot {
    Section,
    Str,
    Int,
    Float,
    Bool,
    IntList,
    IntTuple,
    StrList,
}

impl Slot {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Slot::Section => "a mapping of keys",
            Slot::Str => "str",
            Slot::Int => "int",
            Slot::Float => "float",
            Slot::Bool => "bool",
            Slot::IntList => "list of int",
            Slot::IntTuple => "tuple of int",
            Slot::StrList => "list of str",
        }
    }
}

/// Declares one config section from its table of keys. Each entry is
/// `/// doc` `"YAML_KEY" field: Type [as Slot] = default`: the macro generates the struct (fields in
/// table order), its `Default` (unless the section says `defaults from parent`, for sections whose
/// defaults depend on where they sit), and its `Entry` impl: the schema rows, the assignment of a
/// checked value and the YAML dump. A key exists only through its entry, so no list can forget one.
/// `as Slot` overrides the yacs type a field's Rust type implies (GPUS is a tuple in yacs).
/// Fields after `not keys:` are part of the struct but not of the schema.
macro_rules! config_section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $key:literal $field:ident : $ty:ty $(as $slot:ident)? = $default:expr ),* $(,)?
        }
        $( not keys: { $( $(#[doc = $xdoc:literal])* $xfield:ident : $xty:ty = $xdefault:expr ),* $(,)? } )?
    ) => {
        config_section!(@struct $(#[$meta])* $name { $( $(#[doc = $doc])* $key $field : $ty $(as $slot)? ),* }
            $( { $( $(#[doc = $xdoc])* $xfield : $xty ),* } )?);
        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* $( $( $xfield: $xdefault, )* )? }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident defaults from parent {
            $( $(#[doc = $doc:literal])* $key:literal $field:ident : $ty:ty $(as $slot:ident)? ),* $(,)?
        }
    ) => {
        config_section!(@struct $(#[$meta])* $name { $( $(#[doc = $doc])* $key $field : $ty $(as $slot)? ),* });
    };
    (@struct $(#[$meta:meta])* $name:ident { $( $(#[doc = $doc:literal])* $key:literal $field:ident : $ty:ty $(as $slot:ident)? ),* }
        $( { $( $(#[doc = $xdoc:literal])* $xfield:ident : $xty:ty ),* } )?
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            $( $( $(#[doc = $xdoc])* pub $xfield: $xty, )* )?
        }

        impl Entry for $name {
            fn schema(path: &str, rows: &mut Vec<(String, Slot)>) {
                if !path.is_empty() {
                    rows.push((path.to_owned(), Slot::Section));
                }
                $( schema_row!(rows, &join_key(path, $key), $ty $(as $slot)?); )*
            }

            fn assign(&mut self, rest: &str, path: &str, value: Typed, at: &str) -> Result<()> {
                let (head, tail) = rest.split_once('.').unwrap_or((rest, ""));
                match head {
                    $( $key => self.$field.assign(tail, path, value, at), )*
                    // Unreachable for paths that passed the schema lookup.
                    _ => bail!("{at}: config key {path}: not in the schema"),
                }
            }

            fn dump(&self, name: &str, depth: usize, out: &mut String) {
                let depth = if name.is_empty() {
                    depth
                } else {
                    let _ = writeln!(out, "{}{name}:", "  ".repeat(depth));
                    depth + 1
                };
                $( self.$field.dump($key, depth, out); )*
            }
        }
    };
}
pub(super) use config_section;

/// One schema row for a field: its type's rows, or the overriding slot.
macro_rules! schema_row {
    ($rows:expr, $path:expr, $ty:ty as $slot:ident) => {
        $rows.push(($path.to_owned(), Slot::$slot))
    };
    ($rows:expr, $path:expr, $ty:ty) => {
        <$ty as Entry>::schema($path, $rows)
    };
}
pub(super) use schema_row;

pub(super) fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A key or a section of the schema.
pub(super) trait Entry {
    /// Appends the rows (full dotted path, yacs type) of the entry at `path` (and of its keys).
    fn schema(path: &str, rows: &mut Vec<(String, Slot)>);
    /// Stores a checked `value` for the key `path`; `rest` is the part of the path below this entry.
    fn assign(&mut self, rest: &str, path: &str, value: Typed, at: &str) -> Result<()>;
    /// Writes the entry as YAML lines named `name`, indented `depth` levels.
    fn dump(&self, name: &str, depth: usize, out: &mut String);
}

/// A leaf value: its yacs type, how a checked value becomes it, and its YAML text.
pub(super) trait Leaf: Sized {
    const SLOT: Slot;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self>;
    fn yaml_text(&self) -> String;
}

macro_rules! leaf_entries {
    ($($ty:ty),*) => {$(
        impl Entry for $ty {
            fn schema(path: &str, rows: &mut Vec<(String, Slot)>) {
                rows.push((path.to_owned(), <$ty as Leaf>::SLOT));
            }
            fn assign(&mut self, rest: &str, path: &str, value: Typed, at: &str) -> Result<()> {
                if !rest.is_empty() {
                    bail!("{at}: config key {path}: not in the schema");
                }
                *self = <$ty as Leaf>::from_typed(value, path, at)?;
                Ok(())
            }
            fn dump(&self, name: &str, depth: usize, out: &mut String) {
                let _ = writeln!(out, "{}{name}: {}", "  ".repeat(depth), self.yaml_text());
            }
        }
    )*};
}

leaf_entries!(String, usize, i64, f64, bool, Vec<usize>, [usize; 2], Vec<String>, BlockKind, OptimizerKind);

fn schema_mismatch(path: &str, at: &str) -> anyhow::Error {
    anyhow!("{at}: config key {path}: internal schema mismatch")
}

impl Leaf for String {
    const SLOT: Slot = Slot::Str;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        match value {
            Typed::Str(s) => Ok(s),
            _ => Err(schema_mismatch(path, at)),
        }
    }
    fn yaml_text(&self) -> String {
        quote(self)
    }
}

impl Leaf for i64 {
    const SLOT: Slot = Slot::Int;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        match value {
            Typed::Int(v) => Ok(v),
            _ => Err(schema_mismatch(path, at)),
        }
    }
    fn yaml_text(&self) -> String {
        self.to_string()
    }
}

/// Counts and sizes: yacs ints that must not be negative.
impl Leaf for usize {
    const SLOT: Slot = Slot::Int;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        let v = i64::from_typed(value, path, at)?;
        usize::try_from(v).map_err(|_| anyhow!("{at}: config key {path}: must not be negative, found {v}"))
    }
    fn yaml_text(&self) -> String {
        self.to_string()
    }
}

impl Leaf for f64 {
    const SLOT: Slot = Slot::Float;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        match value {
            Typed::Float(v) => Ok(v),
            _ => Err(schema_mismatch(path, at)),
        }
    }
    fn yaml_text(&self) -> String {
        if self.is_nan() {
            ".nan".to_owned()
        } else if self.is_infinite() {
            if *self > 0.0 { ".inf" } else { "-.inf" }.to_owned()
        } else {
            format!("{self:?}")
        }
    }
}

impl Leaf for bool {
    const SLOT: Slot = Slot::Bool;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        match value {
            Typed::Bool(b) => Ok(b),
            _ => Err(schema_mismatch(path, at)),
        }
    }
    fn yaml_text(&self) -> String {
        if *self { "true" } else { "false" }.to_owned()
    }
}

impl Leaf for Vec<usize> {
    const SLOT: Slot = Slot::IntList;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        let Typed::Ints(values) = value else {
            return Err(schema_mismatch(path, at));
        };
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                usize::try_from(*v)
                    .map_err(|_| anyhow!("{at}: config key {path}[{i}]: must not be negative, found {v}"))
            })
            .collect()
    }
    fn yaml_text(&self) -> String {
        int_list(self)
    }
}

/// MODEL.IMAGE_SIZE / HEATMAP_SIZE: exactly two non-negative ints.
impl Leaf for [usize; 2] {
    const SLOT: Slot = Slot::IntList;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        let counts = Vec::<usize>::from_typed(value, path, at)?;
        match counts.as_slice() {
            [a, b] => Ok([*a, *b]),
            _ => bail!("{at}: config key {path}: expected 2 ints, found {}", counts.len()),
        }
    }
    fn yaml_text(&self) -> String {
        int_list(self)
    }
}

impl Leaf for Vec<String> {
    const SLOT: Slot = Slot::StrList;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        match value {
            Typed::Strs(v) => Ok(v),
            _ => Err(schema_mismatch(path, at)),
        }
    }
    fn yaml_text(&self) -> String {
        format!("[{}]", self.iter().map(|s| quote_plain(s)).collect::<Vec<_>>().join(", "))
    }
}

impl Leaf for BlockKind {
    const SLOT: Slot = Slot::Str;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        let text = String::from_typed(value, path, at)?;
        match text.as_str() {
            "BASIC" => Ok(BlockKind::Basic),
            "BOTTLENECK" => Ok(BlockKind::Bottleneck),
            _ => bail!("{at}: config key {path}: must be BASIC or BOTTLENECK, found '{text}'"),
        }
    }
    fn yaml_text(&self) -> String {
        self.as_str().to_owned()
    }
}

impl Leaf for OptimizerKind {
    const SLOT: Slot = Slot::Str;
    fn from_typed(value: Typed, path: &str, at: &str) -> Result<Self> {
        let text = String::from_typed(value, path, at)?;
        match text.as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "rmsprop" => bail!(
                "{at}: config key {path}: 'rmsprop' is not supported (the reference crashes on it: TRAIN.RMSPROP_ALPHA/CENTERED do not exist); use 'adam' or 'sgd'"
            ),
            _ => bail!("{at}: config key {path}: unknown optimizer '{text}' (the reference knows 'adam' and 'sgd', lower case)"),
        }
    }
    fn yaml_text(&self) -> String {
        self.as_str().to_owned()
    }
}

fn int_list<T: ToString>(v: &[T]) -> String {
    format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

/// A YAML double-quoted string that reads back as exactly `s` after yacs' literal_eval.
pub(super) fn quote(s: &str) -> String {
    // A string that literal_eval would turn into something else must be wrapped once more in
    // Python quotes, e.g. '300' or '(0,)'.
    if literal_eval(s).is_some() {
        let python = format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        return quote_plain(&python);
    }
    // Escaped double quotes keep any character; yacs' literal_eval then sees plain text.
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A YAML double-quoted string escaping only quotes and backslashes (list elements are not
/// literal_eval'ed by yacs).
pub(super) fn quote_plain(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value after yacs decoding and type checking, ready to store.
pub(super) enum Typed {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ints(Vec<i64>),
    Strs(Vec<String>),
}
