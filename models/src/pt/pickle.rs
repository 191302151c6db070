//! A restricted unpickler: exactly the opcodes and globals `torch.save` writes for a
//! (possibly nested) state dict of tensors, and nothing that could run code. Every other
//! global is refused by name; every other opcode by its byte and offset.
//!
//! Values live in an arena and the stack and memo hold indices, so a memoised dict that is
//! filled after being memoised is the same dict when fetched again (Python's reference
//! semantics), without reference counting.

use std::collections::HashMap;

/// A tensor element type named by a `torch.*Storage` global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    Float,
    Double,
    Half,
    BFloat16,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "DoubleStorage" => Self::Double,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "CharStorage" => Self::Char,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn kind(self) -> tch::Kind {
        use tch::Kind;
        match self {
            Self::Float => Kind::Float,
            Self::Double => Kind::Double,
            Self::Half => Kind::Half,
            Self::BFloat16 => Kind::BFloat16,
            Self::Long => Kind::Int64,
            Self::Int => Kind::Int,
            Self::Short => Kind::Int16,
            Self::Char => Kind::Int8,
            Self::Byte => Kind::Uint8,
            Self::Bool => Kind::Bool,
        }
    }
}

/// The only callables a state dict needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageType),
}

/// Where a tensor's elements are: storage `key` (the archive's `data/<key>` record).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub storage: StorageType,
    pub key: String,
    /// Elements in the whole storage, as the persistent id states it.
    pub storage_numel: i64,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A value of the pickle, with containers holding arena ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    /// Insertion-ordered (Python dicts and OrderedDicts alike).
    Dict(Vec<(usize, usize)>),
    Global(Global),
    Storage {
        storage: StorageType,
        key: String,
        numel: i64,
    },
    Tensor(TensorSpec),
    Mark,
}

/// The decoded pickle: the arena and the id of the top-level object.
pub struct Pickle {
    pub arena: Vec<Value>,
    pub root: usize,
}

impl Pickle {
    pub fn get(&self, id: usize) -> &Value {
        &self.arena[id]
    }

    /// The string at `id`, if it is one.
    pub fn str(&self, id: usize) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A plain-data view (dicts with string keys, lists, scalars) as JSON, for configs
    /// stored next to the weights; `None` for tensors and globals.
    pub fn to_json(&self, id: usize) -> Option<serde_json::Value> {
        use serde_json::Value as J;
        Some(match self.get(id) {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Tuple(items) | Value::List(items) => J::Array(
                items
                    .iter()
                    .map(|&i| self.to_json(i))
                    .collect::<Option<_>>()?,
            ),
            Value::Dict(items) => {
                let mut map = serde_json::Map::new();
                for &(k, v) in items {
                    map.insert(self.str(k)?.to_string(), self.to_json(v)?);
                }
                J::Object(map)
            }
            _ => return None,
        })
    }
}

/// Why a pickle was refused (the caller adds the file name).
pub type PickleError = String;

const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const EMPTY_DICT: u8 = b'}';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const EMPTY_LIST: u8 = b']';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const GLOBAL: u8 = b'c';
const STACK_GLOBAL: u8 = 0x93;
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const MEMOIZE: u8 = 0x94;
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const BINPERSID: u8 = b'Q';

/// The globals this reader accepts, as `module.name`.
pub const ALLOWED_GLOBALS: &str = "collections.OrderedDict, torch._utils._rebuild_tensor_v2, \
     torch._utils._rebuild_parameter, torch.{Float,Double,Half,BFloat16,Long,Int,Short,Char,Byte,Bool}Storage";

fn resolve_global(module: &str, name: &str) -> Result<Global, PickleError> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", storage) => StorageType::from_name(storage)
            .map(Global::Storage)
            .ok_or_else(|| refused(module, name)),
        _ => Err(refused(module, name)),
    }
}

fn refused(module: &str, name: &str) -> PickleError {
    format!(
        "refusing pickle global `{module}.{name}`: only a state dict of tensors is read \
         (allowed: {ALLOWED_GLOBALS})"
    )
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let bytes: &'a [u8] = self.bytes;
        let end = self.pos.checked_add(n).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| format!("pickle truncated at byte {}", self.pos))?;
        let out = &bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let bytes: &'a [u8] = self.bytes;
        let rest = &bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("pickle: unterminated GLOBAL at byte {}", self.pos))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|e| format!("pickle: {e}"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|e| format!("pickle: string at byte {at}: {e}"))
    }
}

struct Machine {
    arena: Vec<Value>,
    stack: Vec<usize>,
    memo: HashMap<u32, usize>,
}

impl Machine {
    fn push(&mut self, v: Value) {
        self.arena.push(v);
        self.stack.push(self.arena.len() - 1);
    }

    fn pop(&mut self) -> Result<usize, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle: stack underflow".to_string())
    }

    fn top(&self) -> Result<usize, PickleError> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| "pickle: empty stack".to_string())
    }

    /// Pops everything down to (and including) the newest mark.
    fn pop_mark(&mut self) -> Result<Vec<usize>, PickleError> {
        let at = self
            .stack
            .iter()
            .rposition(|&i| self.arena[i] == Value::Mark)
            .ok_or_else(|| "pickle: no MARK on the stack".to_string())?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn int(&self, id: usize, what: &str) -> Result<i64, PickleError> {
        match &self.arena[id] {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => Err(format!("pickle: {what} is {other:?}, expected an int")),
        }
    }

    fn ints(&self, id: usize, what: &str) -> Result<Vec<i64>, PickleError> {
        match &self.arena[id] {
            Value::Tuple(items) | Value::List(items) => {
                items.iter().map(|&i| self.int(i, what)).collect()
            }
            other => Err(format!("pickle: {what} is {other:?}, expected a tuple")),
        }
    }

    fn set_items(&mut self, dict: usize, items: &[usize]) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err("pickle: SETITEMS with an odd number of items".into());
        }
        for pair in items.chunks(2) {
            let Value::Dict(entries) = &self.arena[dict] else {
                return Err("pickle: SETITEM(S) on a non-dict".into());
            };
            // A repeated key replaces the value and keeps its first position, as in Python.
            let existing = entries
                .iter()
                .position(|&(k, _)| self.arena[k] == self.arena[pair[0]]);
            let Value::Dict(entries) = &mut self.arena[dict] else {
                unreachable!("checked above");
            };
            match existing {
                Some(i) => entries[i].1 = pair[1],
                None => entries.push((pair[0], pair[1])),
            }
        }
        Ok(())
    }

    fn reduce(&mut self, callable: usize, args: usize) -> Result<Value, PickleError> {
        let Value::Global(g) = self.arena[callable] else {
            return Err(format!(
                "pickle: REDUCE on {:?}, not an allowed global",
                self.arena[callable]
            ));
        };
        let Value::Tuple(args) = self.arena[args].clone() else {
            return Err("pickle: REDUCE arguments are not a tuple".into());
        };
        match g {
            Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Global::OrderedDict => Err("pickle: OrderedDict(...) with arguments".into()),
            Global::RebuildTensorV2 if (6..=7).contains(&args.len()) => {
                let Value::Storage {
                    storage,
                    key,
                    numel,
                } = self.arena[args[0]].clone()
                else {
                    return Err("pickle: _rebuild_tensor_v2 without a storage".into());
                };
                Ok(Value::Tensor(TensorSpec {
                    storage,
                    key,
                    storage_numel: numel,
                    offset: self.int(args[1], "storage offset")?,
                    size: self.ints(args[2], "tensor size")?,
                    stride: self.ints(args[3], "tensor stride")?,
                }))
            }
            Global::RebuildParameter if args.len() == 3 => match &self.arena[args[0]] {
                t @ Value::Tensor(_) => Ok(t.clone()),
                _ => Err("pickle: _rebuild_parameter of a non-tensor".into()),
            },
            other => Err(format!(
                "pickle: {other:?} called with {} arguments",
                args.len()
            )),
        }
    }

    fn persistent(&self, pid: usize) -> Result<Value, PickleError> {
        let bad = || format!("pickle: unsupported persistent id {:?}", self.arena[pid]);
        let Value::Tuple(items) = &self.arena[pid] else {
            return Err(bad());
        };
        if items.len() != 5 || self.arena[items[0]] != Value::Str("storage".into()) {
            return Err(bad());
        }
        let Value::Global(Global::Storage(storage)) = self.arena[items[1]] else {
            return Err(bad());
        };
        let Value::Str(key) = &self.arena[items[2]] else {
            return Err(bad());
        };
        Ok(Value::Storage {
            storage,
            key: key.clone(),
            numel: self.int(items[4], "storage size")?,
        })
    }
}

/// Runs the pickle program in `bytes` and returns its result.
pub fn load(bytes: &[u8]) -> Result<Pickle, PickleError> {
    let mut r = Reader { bytes, pos: 0 };
    let mut m = Machine {
        arena: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            PROTO => {
                let v = r.u8()?;
                if v > 5 {
                    return Err(format!("pickle protocol {v} is not supported"));
                }
            }
            FRAME => {
                r.take(8)?;
            }
            STOP => {
                let root = m.pop()?;
                return Ok(Pickle {
                    arena: m.arena,
                    root,
                });
            }
            MARK => m.push(Value::Mark),
            EMPTY_TUPLE => m.push(Value::Tuple(Vec::new())),
            TUPLE => {
                let items = m.pop_mark()?;
                m.push(Value::Tuple(items));
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = (op - TUPLE1 + 1) as usize;
                if m.stack.len() < n {
                    return Err("pickle: stack underflow".into());
                }
                let items = m.stack.split_off(m.stack.len() - n);
                m.push(Value::Tuple(items));
            }
            EMPTY_DICT => m.push(Value::Dict(Vec::new())),
            SETITEM => {
                let v = m.pop()?;
                let k = m.pop()?;
                let d = m.top()?;
                m.set_items(d, &[k, v])?;
            }
            SETITEMS => {
                let items = m.pop_mark()?;
                let d = m.top()?;
                m.set_items(d, &items)?;
            }
            EMPTY_LIST => m.push(Value::List(Vec::new())),
            APPEND | APPENDS => {
                let items = if op == APPEND {
                    vec![m.pop()?]
                } else {
                    m.pop_mark()?
                };
                let l = m.top()?;
                let Value::List(list) = &mut m.arena[l] else {
                    return Err(format!("pickle: APPEND on a non-list at byte {at}"));
                };
                list.extend(items);
            }
            NONE => m.push(Value::None),
            NEWTRUE => m.push(Value::Bool(true)),
            NEWFALSE => m.push(Value::Bool(false)),
            BININT => {
                let v = i32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                m.push(Value::Int(v as i64));
            }
            BININT1 => {
                let v = r.u8()?;
                m.push(Value::Int(v as i64));
            }
            BININT2 => {
                let v = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
                m.push(Value::Int(v as i64));
            }
            LONG1 => {
                let n = r.u8()? as usize;
                if n > 8 {
                    return Err(format!("pickle: integer of {n} bytes at byte {at}"));
                }
                let raw = r.take(n)?;
                let fill = if raw.last().is_some_and(|&b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut buf = [fill; 8];
                buf[..n].copy_from_slice(raw);
                m.push(Value::Int(i64::from_le_bytes(buf)));
            }
            BINFLOAT => {
                let v = f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
                m.push(Value::Float(v));
            }
            BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                let n = match op {
                    BINUNICODE => r.u32()? as usize,
                    SHORT_BINUNICODE => r.u8()? as usize,
                    _ => {
                        let n = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
                        usize::try_from(n).map_err(|_| "pickle: string too long".to_string())?
                    }
                };
                let s = r.utf8(n)?;
                m.push(Value::Str(s));
            }
            GLOBAL => {
                let module = r.line()?.to_string();
                let name = r.line()?;
                m.push(Value::Global(resolve_global(&module, name)?));
            }
            STACK_GLOBAL => {
                let name = m.pop()?;
                let module = m.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&m.arena[module], &m.arena[name])
                else {
                    return Err(format!("pickle: STACK_GLOBAL without names at byte {at}"));
                };
                let g = resolve_global(module, name)?;
                m.push(Value::Global(g));
            }
            BINPUT | LONG_BINPUT | MEMOIZE => {
                let key = match op {
                    BINPUT => r.u8()? as u32,
                    LONG_BINPUT => r.u32()?,
                    _ => m.memo.len() as u32,
                };
                let top = m.top()?;
                m.memo.insert(key, top);
            }
            BINGET | LONG_BINGET => {
                let key = if op == BINGET {
                    r.u8()? as u32
                } else {
                    r.u32()?
                };
                let id = *m
                    .memo
                    .get(&key)
                    .ok_or_else(|| format!("pickle: memo {key} unset at byte {at}"))?;
                m.stack.push(id);
            }
            REDUCE => {
                let args = m.pop()?;
                let callable = m.pop()?;
                let v = m.reduce(callable, args)?;
                m.push(v);
            }
            BUILD => {
                // Only `OrderedDict.__setstate__` with instance attributes (a state dict's
                // `_metadata`) reaches here; the attributes carry no weights.
                let state = m.pop()?;
                let obj = m.top()?;
                if !matches!(m.arena[obj], Value::Dict(_))
                    || !matches!(m.arena[state], Value::Dict(_) | Value::None)
                {
                    return Err(format!(
                        "pickle: BUILD of {:?} at byte {at} (only dict attributes are accepted)",
                        m.arena[obj]
                    ));
                }
            }
            BINPERSID => {
                let pid = m.pop()?;
                let v = m.persistent(pid)?;
                m.push(v);
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {at} (not written by torch.save for a state dict)"
                ));
            }
        }
    }
}
