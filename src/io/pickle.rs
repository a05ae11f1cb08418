//! A whitelist pickle VM for PyTorch checkpoints. It executes nothing: the only callables it
//! knows are the few torch/collections globals a state_dict needs, and those are interpreted
//! here as data constructors. Every size read from the input is bounded before allocating.
//!
//! Values are flat (containers live in an arena and are referenced by index), so a maliciously
//! deep or cyclic structure can neither overflow the stack on drop nor loop forever.

pub use super::dtype::StorageDtype;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::rc::Rc;

/// Limits that keep a hostile pickle from exhausting memory.
const MAX_STACK: usize = 1 << 20;
const MAX_MARKS: usize = 1 << 16;
const MAX_MEMO: usize = 1 << 22;
const MAX_STRING: usize = 1 << 28;
const MAX_TENSORS: usize = 1 << 20;
const MAX_CONTAINERS: usize = 1 << 24;
const MAX_NDIM: usize = 32;
/// Nesting depth followed when reading the unpickled object (state_dict → wrapper → value).
const MAX_WALK_DEPTH: usize = 32;

/// The whitelisted globals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`: only passed around as a type tag.
    TensorType,
    StorageType(StorageDtype),
}

fn lookup_global(module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._utils", "_rebuild_from_type_v2") | ("torch._tensor", "_rebuild_from_type_v2") => {
            Global::RebuildFromTypeV2
        }
        ("torch", "Tensor") | ("torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorType,
        ("torch", cls) => match StorageDtype::from_torch_class(cls) {
            Some(d) => Global::StorageType(d),
            None => bail!("refused global {module}.{name} (not in the checkpoint whitelist)"),
        },
        _ => {
            let hint = if module.starts_with("torch") || module.starts_with("collections") {
                ""
            } else {
                " — pickled objects other than tensors/dicts are not loaded; save model.state_dict()"
            };
            bail!("refused global {module}.{name} (not in the checkpoint whitelist){hint}")
        }
    };
    Ok(g)
}

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (only the legacy magic number uses one).
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// Tuples, lists and sets: index into `Vm::seqs`.
    Seq(usize),
    /// Dicts and OrderedDicts: index into `Vm::dicts`.
    Dict(usize),
    Global(Global),
    /// A storage from a persistent id: index into `Vm::storages`.
    Storage(usize),
    Tensor(usize),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Seq(_) => "tuple/list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class/function",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

#[derive(Default)]
struct Dict {
    items: Vec<(Value, Value)>,
    /// Position of string keys, so a repeated key replaces its value like Python does.
    str_index: HashMap<Rc<str>, usize>,
}

impl Dict {
    fn set(&mut self, k: Value, v: Value) {
        if let Value::Str(s) = &k {
            if let Some(&i) = self.str_index.get(s) {
                self.items[i].1 = v;
                return;
            }
            self.str_index.insert(s.clone(), self.items.len());
        }
        self.items.push((k, v));
    }
}

/// A storage named by a persistent id: `root_key` is the record / key under which its bytes
/// are stored, `root_numel` the element count of that whole record, and (`offset`, `numel`)
/// the part this storage covers (legacy files can reference views of a root storage).
#[derive(Clone, Debug)]
pub struct StorageRef {
    pub root_key: String,
    pub dtype: StorageDtype,
    pub root_numel: u64,
    pub offset: u64,
    pub numel: u64,
}

/// A tensor as a view of a storage (element units), validated to lie inside the storage.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub storage: usize,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What a pickle holding a state_dict yields: keys in pickle order and the tensors' layouts.
pub struct Unpickled {
    pub entries: Vec<(String, usize)>,
    pub tensors: Vec<TensorRef>,
    pub storages: Vec<StorageRef>,
}

/// A generic object from a small auxiliary pickle (legacy header parts).
#[derive(Debug, PartialEq)]
pub enum Plain {
    None,
    Bool(bool),
    Int(i64),
    BigIntLe(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Plain>),
    Dict(Vec<(Plain, Plain)>),
    Other(&'static str),
}

pub struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    seqs: Vec<Vec<Value>>,
    dicts: Vec<Dict>,
    storages: Vec<StorageRef>,
    storage_by_key: HashMap<String, usize>,
    tensors: Vec<TensorRef>,
    /// Type and element count of each root storage key seen, to reject inconsistent references.
    roots: HashMap<String, (StorageDtype, u64)>,
}

impl<'a> Vm<'a> {
    /// A VM that reads pickles from `data` starting at byte `pos`.
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Vm {
            data,
            pos,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            seqs: Vec::new(),
            dicts: Vec::new(),
            storages: Vec::new(),
            storage_by_key: HashMap::new(),
            tensors: Vec::new(),
            roots: HashMap::new(),
        }
    }

    /// Byte position after the last executed STOP.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| anyhow!("pickle truncated at byte {} (needs {} more bytes)", self.pos, n))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .take(4096)
            .position(|&c| c == b'\n')
            .ok_or_else(|| anyhow!("pickle truncated: unterminated text line at byte {}", self.pos))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| anyhow!("pickle: non-UTF-8 text at byte {}", self.pos))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn len_checked(&self, n: u64) -> Result<usize> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining || n > MAX_STRING as u64 {
            bail!("pickle declares a {n}-byte string at byte {} but only {remaining} bytes remain", self.pos);
        }
        Ok(n as usize)
    }
    fn text(&mut self, n: u64) -> Result<Value> {
        let n = self.len_checked(n)?;
        let at = self.pos;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| anyhow!("pickle: invalid UTF-8 string at byte {at}"))?;
        Ok(Value::Str(Rc::from(s)))
    }
    /// Python 2 `str` (legacy files written by py2): bytes, taken as Latin-1 text.
    fn py2_text(&mut self, n: u64) -> Result<Value> {
        let n = self.len_checked(n)?;
        let b = self.take(n)?;
        let s: String = b.iter().map(|&c| c as char).collect();
        Ok(Value::Str(Rc::from(s.as_str())))
    }
    fn bytes(&mut self, n: u64) -> Result<Value> {
        let n = self.len_checked(n)?;
        Ok(Value::Bytes(Rc::from(self.take(n)?)))
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            bail!("pickle stack deeper than {MAX_STACK} at byte {}", self.pos);
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self, op: &str) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow at opcode {op} (byte {})", self.pos);
        }
        Ok(self.stack.pop().expect("checked non-empty"))
    }
    fn top_mut(&mut self, op: &str) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("pickle stack underflow at opcode {op} (byte {})", self.pos);
        }
        Ok(self.stack.last_mut().expect("checked non-empty"))
    }
    fn pop_mark(&mut self, op: &str) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("pickle opcode {op} without MARK at byte {}", self.pos))?;
        Ok(self.stack.split_off(m))
    }
    fn check_containers(&self) -> Result<()> {
        if self.seqs.len() + self.dicts.len() >= MAX_CONTAINERS {
            bail!("pickle builds more than {MAX_CONTAINERS} containers (byte {})", self.pos);
        }
        Ok(())
    }
    fn new_seq(&mut self, items: Vec<Value>) -> Result<Value> {
        self.check_containers()?;
        self.seqs.push(items);
        Ok(Value::Seq(self.seqs.len() - 1))
    }
    fn new_dict(&mut self) -> Result<Value> {
        self.check_containers()?;
        self.dicts.push(Dict::default());
        Ok(Value::Dict(self.dicts.len() - 1))
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top_mut("PUT")?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            bail!("pickle memo larger than {MAX_MEMO} entries at byte {}", self.pos);
        }
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| anyhow!("pickle memo key {idx} missing at byte {}", self.pos))?;
        self.push(v)
    }
    fn setitems(&mut self, target: &Value, kv: Vec<Value>, op: &str) -> Result<()> {
        let Value::Dict(d) = *target else { bail!("pickle {op} on a {} at byte {}", target.kind(), self.pos) };
        if !kv.len().is_multiple_of(2) {
            bail!("pickle {op} with an odd number of items at byte {}", self.pos);
        }
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            self.dicts[d].set(k, v);
        }
        Ok(())
    }
    fn extend_seq(&mut self, target: &Value, items: Vec<Value>, op: &str) -> Result<()> {
        let Value::Seq(s) = *target else { bail!("pickle {op} on a {} at byte {}", target.kind(), self.pos) };
        self.seqs[s].extend(items);
        Ok(())
    }

    /// Runs one pickle up to its STOP and returns the top of the stack.
    fn run(&mut self) -> Result<Value> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        bail!("pickle protocol {p} unsupported (byte {at})");
                    }
                }
                0x95 => {
                    // FRAME: framing is only a read-ahead hint.
                    self.u64()?;
                }
                b'.' => {
                    let v = self.pop("STOP")?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        bail!("pickle has more than {MAX_MARKS} open MARKs at byte {at}");
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    // POP: a bare MARK on top is popped as the mark itself.
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop("POP")?;
                    }
                }
                b'1' => {
                    self.pop_mark("POP_MARK")?;
                }
                b'2' => {
                    let v = self.top_mut("DUP")?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as u64 } else { self.u32()? as u64 };
                    let n = self.len_checked(n)?;
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        // Two's complement little-endian, sign-extended.
                        let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
                        let mut a = [fill; 8];
                        a[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(a))
                    } else {
                        Value::BigInt(Rc::from(b))
                    };
                    self.push(v)?
                }
                b'I' => {
                    // Protocol 0 INT (also encodes bools as I01/I00).
                    let s = self.line()?;
                    let v = match s {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(s.parse::<i64>().map_err(|_| anyhow!("pickle: bad INT {s:?} at byte {at}"))?),
                    };
                    self.push(v)?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let v = self.text(n)?;
                    self.push(v)?
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let v = self.text(n)?;
                    self.push(v)?
                }
                0x8d => {
                    let n = self.u64()?;
                    let v = self.text(n)?;
                    self.push(v)?
                }
                b'U' => {
                    let n = self.u8()? as u64;
                    let v = self.py2_text(n)?;
                    self.push(v)?
                }
                b'T' => {
                    let n = self.u32()? as u64;
                    let v = self.py2_text(n)?;
                    self.push(v)?
                }
                b'C' => {
                    let n = self.u8()? as u64;
                    let v = self.bytes(n)?;
                    self.push(v)?
                }
                b'B' => {
                    let n = self.u32()? as u64;
                    let v = self.bytes(n)?;
                    self.push(v)?
                }
                0x8e => {
                    let n = self.u64()?;
                    let v = self.bytes(n)?;
                    self.push(v)?
                }
                b')' => {
                    let v = self.new_seq(Vec::new())?;
                    self.push(v)?
                }
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    let v = self.new_seq(items)?;
                    self.push(v)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        bail!("pickle stack underflow at opcode TUPLE{n} (byte {at})");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.new_seq(items)?;
                    self.push(v)?
                }
                b']' | 0x8f => {
                    let v = self.new_seq(Vec::new())?;
                    self.push(v)?
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark("LIST")?;
                    let v = self.new_seq(items)?;
                    self.push(v)?
                }
                b'a' => {
                    let item = self.pop("APPEND")?;
                    let target = self.top_mut("APPEND")?.clone();
                    self.extend_seq(&target, vec![item], "APPEND")?;
                }
                b'e' | 0x90 => {
                    let name = if op == b'e' { "APPENDS" } else { "ADDITEMS" };
                    let items = self.pop_mark(name)?;
                    let target = self.top_mut(name)?.clone();
                    self.extend_seq(&target, items, name)?;
                }
                b'}' => {
                    let v = self.new_dict()?;
                    self.push(v)?
                }
                b'd' => {
                    let kv = self.pop_mark("DICT")?;
                    let v = self.new_dict()?;
                    self.setitems(&v, kv, "DICT")?;
                    self.push(v)?
                }
                b's' => {
                    let v = self.pop("SETITEM")?;
                    let k = self.pop("SETITEM")?;
                    let target = self.top_mut("SETITEM")?.clone();
                    self.setitems(&target, vec![k, v], "SETITEM")?;
                }
                b'u' => {
                    let kv = self.pop_mark("SETITEMS")?;
                    let target = self.top_mut("SETITEMS")?.clone();
                    self.setitems(&target, kv, "SETITEMS")?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = lookup_global(module, name).map_err(|e| anyhow!("{e} (byte {at})"))?;
                    self.push(Value::Global(g))?
                }
                0x93 => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        bail!("pickle STACK_GLOBAL with non-string operands at byte {at}")
                    };
                    let g = lookup_global(module, name).map_err(|e| anyhow!("{e} (byte {at})"))?;
                    self.push(Value::Global(g))?
                }
                b'R' | 0x81 => {
                    let name = if op == b'R' { "REDUCE" } else { "NEWOBJ" };
                    let args = self.pop(name)?;
                    let func = self.pop(name)?;
                    // In a torch state_dict the key is pushed just before its tensor's
                    // rebuild call, so a string there names the tensor that failed.
                    let key = match self.stack.last() {
                        Some(Value::Str(k)) => format!("tensor '{k}': "),
                        _ => String::new(),
                    };
                    let v = self.call(&func, &args).map_err(|e| anyhow!("{key}{e} (opcode {name} at byte {at})"))?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD sets an object's state; the state (e.g. a state_dict's `_metadata`)
                    // is not needed, so it is dropped and the object left as is.
                    self.pop("BUILD")?;
                    self.top_mut("BUILD")?;
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let v = self.persistent_load(&pid).map_err(|e| anyhow!("{e} (opcode BINPERSID at byte {at})"))?;
                    self.push(v)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'p' => {
                    let s = self.line()?;
                    let i = s.parse::<u32>().map_err(|_| anyhow!("pickle: bad PUT index at byte {at}"))?;
                    self.memo_put(i)?
                }
                b'g' => {
                    let s = self.line()?;
                    let i = s.parse::<u32>().map_err(|_| anyhow!("pickle: bad GET index at byte {at}"))?;
                    self.memo_get(i)?
                }
                _ => bail!("pickle opcode 0x{op:02x} ({}) not supported at byte {at}", opcode_name(op)),
            }
        }
    }

    fn seq(&self, v: &Value, what: &str) -> Result<&[Value]> {
        match v {
            Value::Seq(i) => Ok(&self.seqs[*i]),
            other => bail!("{what}: expected a tuple, found {}", other.kind()),
        }
    }

    fn int(v: &Value, what: &str) -> Result<i64> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => bail!("{what}: expected an int, found {}", other.kind()),
        }
    }

    fn usize_list(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        let items = self.seq(v, what)?;
        if items.len() > MAX_NDIM {
            bail!("{what}: {} dimensions (max {MAX_NDIM})", items.len());
        }
        items
            .iter()
            .map(|x| {
                let i = Self::int(x, what)?;
                usize::try_from(i).map_err(|_| anyhow!("{what}: negative value {i}"))
            })
            .collect()
    }

    /// Interprets a call of a whitelisted global. Nothing is executed.
    fn call(&mut self, func: &Value, args: &Value) -> Result<Value> {
        let Value::Global(g) = func else {
            bail!("call of a {} (only whitelisted globals can be called)", func.kind())
        };
        let args: Vec<Value> = self.seq(args, "call arguments")?.to_vec();
        match g {
            Global::OrderedDict => {
                let d = self.new_dict()?;
                if let Some(items) = args.first() {
                    // OrderedDict([(k, v), ...])
                    let pairs = self.seq(items, "OrderedDict items")?.to_vec();
                    let mut kv = Vec::with_capacity(pairs.len().min(1 << 16) * 2);
                    for p in &pairs {
                        let pair = self.seq(p, "OrderedDict item")?;
                        if pair.len() != 2 {
                            bail!("OrderedDict item is not a pair");
                        }
                        kv.push(pair[0].clone());
                        kv.push(pair[1].clone());
                    }
                    self.setitems(&d, kv, "OrderedDict")?;
                }
                Ok(d)
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                if args.len() < 4 {
                    bail!("_rebuild_tensor with {} arguments (needs ≥ 4)", args.len());
                }
                let Value::Storage(storage) = args[0] else {
                    bail!("_rebuild_tensor: first argument is a {}, not a storage", args[0].kind())
                };
                let offset = Self::int(&args[1], "_rebuild_tensor storage_offset")?;
                let offset = u64::try_from(offset).map_err(|_| anyhow!("negative storage_offset {offset}"))?;
                let shape = self.usize_list(&args[2], "_rebuild_tensor size")?;
                let stride = self.usize_list(&args[3], "_rebuild_tensor stride")?;
                self.new_tensor(storage, offset, shape, stride)
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => bail!("_rebuild_parameter without a tensor argument"),
            },
            Global::RebuildFromTypeV2 => {
                // (func, new_type, args, state): rebuild with func(*args), ignore type/state.
                if args.len() < 3 {
                    bail!("_rebuild_from_type_v2 with {} arguments (needs ≥ 3)", args.len());
                }
                if !matches!(args[1], Value::Global(Global::TensorType)) {
                    bail!("_rebuild_from_type_v2 with a non-tensor type");
                }
                self.call(&args[0], &args[2])
            }
            Global::TensorType | Global::StorageType(_) => {
                bail!("calling a tensor/storage class directly is not supported")
            }
        }
    }

    fn new_tensor(&mut self, storage: usize, offset: u64, shape: Vec<usize>, stride: Vec<usize>) -> Result<Value> {
        if shape.len() != stride.len() {
            bail!("tensor with {} sizes but {} strides", shape.len(), stride.len());
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("tensor shape {shape:?} overflows"))?;
        let s = &self.storages[storage];
        if numel > 0 {
            // Largest element index touched, which must lie inside the storage.
            let mut last = offset;
            for (&d, &st) in shape.iter().zip(&stride) {
                let step = ((d - 1) as u64)
                    .checked_mul(st as u64)
                    .ok_or_else(|| anyhow!("tensor stride {stride:?} overflows"))?;
                last = last.checked_add(step).ok_or_else(|| anyhow!("tensor extent overflows"))?;
            }
            if last >= s.numel {
                bail!(
                    "tensor of shape {shape:?}, stride {stride:?}, offset {offset} reaches element {last} of a {}-element storage '{}'",
                    s.numel,
                    s.root_key
                );
            }
        }
        if self.tensors.len() >= MAX_TENSORS {
            bail!("more than {MAX_TENSORS} tensors");
        }
        self.tensors.push(TensorRef { storage, offset, shape, stride });
        Ok(Value::Tensor(self.tensors.len() - 1))
    }

    /// `('storage', StorageClass, key, location, numel)` (zip files) or
    /// `('storage', StorageClass, root_key, location, root_numel, view_metadata)` (legacy).
    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let t = self.seq(pid, "persistent id")?.to_vec();
        match t.first() {
            Some(Value::Str(s)) if &**s == "storage" => {}
            Some(Value::Str(s)) if &**s == "module" => {
                bail!("the checkpoint pickles a whole nn.Module (source code), not a state_dict")
            }
            _ => bail!("persistent id is not a ('storage', ...) tuple"),
        }
        if t.len() != 5 && t.len() != 6 {
            bail!("persistent id with {} fields (expected 5 or 6)", t.len());
        }
        let Value::Global(Global::StorageType(dtype)) = t[1] else {
            bail!("persistent id names a {} instead of a torch.*Storage class", t[1].kind())
        };
        let key: String = match &t[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => bail!("storage key is a {}", other.kind()),
        };
        let root_numel = Self::int(&t[4], "storage size")?;
        let root_numel = u64::try_from(root_numel).map_err(|_| anyhow!("storage '{key}' has negative size"))?;
        let (offset, numel) = match t.get(5) {
            None | Some(Value::None) => (0, root_numel),
            Some(view) => {
                let v = self.seq(view, "storage view")?;
                if v.len() != 3 {
                    bail!("storage '{key}' view metadata has {} fields", v.len());
                }
                let off = u64::try_from(Self::int(&v[1], "view offset")?)
                    .map_err(|_| anyhow!("storage '{key}' view has a negative offset"))?;
                let n = u64::try_from(Self::int(&v[2], "view size")?)
                    .map_err(|_| anyhow!("storage '{key}' view has a negative size"))?;
                if off.checked_add(n).is_none_or(|e| e > root_numel) {
                    bail!("storage '{key}' view [{off}, +{n}) exceeds its {root_numel} elements");
                }
                (off, n)
            }
        };
        let view_key = format!("{key}@{offset}+{numel}");
        if let Some(&i) = self.storage_by_key.get(&view_key) {
            let s = &self.storages[i];
            if s.dtype != dtype || s.root_numel != root_numel {
                bail!("storage '{key}' referenced with different types or sizes");
            }
            return Ok(Value::Storage(i));
        }
        // Every reference to a root key must agree on its type and size.
        match self.roots.get(&key) {
            Some(&(d, n)) if d != dtype || n != root_numel => {
                bail!("storage '{key}' referenced with different types or sizes")
            }
            Some(_) => {}
            None => {
                self.roots.insert(key.clone(), (dtype, root_numel));
            }
        }
        if self.storages.len() >= MAX_TENSORS {
            bail!("more than {MAX_TENSORS} storages");
        }
        self.storages.push(StorageRef { root_key: key, dtype, root_numel, offset, numel });
        self.storage_by_key.insert(view_key, self.storages.len() - 1);
        Ok(Value::Storage(self.storages.len() - 1))
    }

    /// Runs the next pickle and reads it as a state_dict: a dict of tensors, or a dict whose
    /// `state_dict` entry is one (other entries of such a wrapper are ignored).
    pub fn load_state_dict(&mut self) -> Result<Unpickled> {
        let top = self.run()?;
        let Value::Dict(mut d) = top else {
            bail!("the checkpoint holds a {}, not a state_dict (dict of tensors)", top.kind())
        };
        if let Some((_, v)) =
            self.dicts[d].items.iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == "state_dict"))
        {
            match v {
                Value::Dict(inner) => d = *inner,
                other => {
                    bail!("key 'state_dict' holds a {} (a pickled nn.Module?), not a dict of tensors", other.kind())
                }
            }
        }
        let mut entries = Vec::with_capacity(self.dicts[d].items.len());
        for (k, v) in &self.dicts[d].items {
            let Value::Str(k) = k else { bail!("state_dict has a non-string key ({})", k.kind()) };
            let Value::Tensor(t) = v else { bail!("key '{k}' holds a {}, not a tensor", v.kind()) };
            entries.push((k.to_string(), *t));
        }
        // Later pickles of the same file start with no storages (their indices restart at 0).
        self.storage_by_key.clear();
        self.roots.clear();
        Ok(Unpickled {
            entries,
            tensors: std::mem::take(&mut self.tensors),
            storages: std::mem::take(&mut self.storages),
        })
    }

    /// Runs the next pickle and converts it to a plain value (for small header pickles).
    pub fn load_plain(&mut self) -> Result<Plain> {
        let top = self.run()?;
        self.plain(&top, 0)
    }

    fn plain(&self, v: &Value, depth: usize) -> Result<Plain> {
        if depth > MAX_WALK_DEPTH {
            bail!("pickle nested deeper than {MAX_WALK_DEPTH} levels");
        }
        Ok(match v {
            Value::None => Plain::None,
            Value::Bool(b) => Plain::Bool(*b),
            Value::Int(i) => Plain::Int(*i),
            Value::BigInt(b) => Plain::BigIntLe(b.to_vec()),
            Value::Float(f) => Plain::Float(*f),
            Value::Str(s) => Plain::Str(s.to_string()),
            Value::Bytes(b) => Plain::Bytes(b.to_vec()),
            Value::Seq(i) => {
                Plain::List(self.seqs[*i].iter().map(|x| self.plain(x, depth + 1)).collect::<Result<_>>()?)
            }
            Value::Dict(i) => Plain::Dict(
                self.dicts[*i]
                    .items
                    .iter()
                    .map(|(k, x)| Ok((self.plain(k, depth + 1)?, self.plain(x, depth + 1)?)))
                    .collect::<Result<_>>()?,
            ),
            other => Plain::Other(other.kind()),
        })
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'P' => "PERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82..=0x84 => "EXT",
        0x92 => "NEWOBJ_EX",
        0x96..=0x98 => "BYTEARRAY8/NEXT_BUFFER/READONLY_BUFFER",
        b'F' => "FLOAT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        _ => "unknown",
    }
}
