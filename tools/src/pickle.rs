//! A minimal, safe pickle reader for the CIFAR-10 python batches, and a
//! writer of the official (Python 2, protocol 2) layout for fixtures.
//!
//! Only data is built, never code run: the two callables a CIFAR batch
//! contains are recognised by name (`numpy…multiarray._reconstruct` with
//! `numpy.dtype`, and `_codecs.encode`, which Python 3 uses for `bytes` in
//! protocol 2); any other global is an error. Opcodes of protocols 0–5 that
//! such files use are supported: the Python 2 originals (`U`/`T` strings),
//! Python 3 re-pickles at protocol 2 (`X` strings, `_codecs.encode`) and at
//! protocol 4/5 (frames, memoize, `STACK_GLOBAL`, short unicode and bytes).

//!
//! # Bounds
//! Every size comes from the input and is checked: a length runs no further
//! than the input, a memo index is at most the number of opcodes read so far
//! (what a pickler numbering its memo from 0 can have stored), containers nest
//! at most [`MAX_DEPTH`] deep, and a container already inside another one
//! cannot be changed again, so the values form no cycles. Memory is therefore
//! proportional to the input, and dropping a value never recurses.

use std::cell::{Cell, Ref, RefCell};
use std::rc::Rc;

/// Deepest nesting of lists, tuples and dicts accepted. A CIFAR-10 batch
/// nests 3 deep; Python's own pickler gives up near 1,000.
pub const MAX_DEPTH: usize = 256;

/// A decoded pickle value (only what CIFAR-10 batches hold).
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Python 2 `str` / Python 3 `bytes` or `str` (as UTF-8 bytes).
    Bytes(Rc<Vec<u8>>),
    List(Rc<Container<Vec<Value>>>),
    Tuple(Rc<Container<Vec<Value>>>),
    Dict(Rc<Container<Vec<(Value, Value)>>>),
    Global(String, String),
    /// `numpy.dtype(descr, …)`.
    Dtype(String),
    /// A numpy array: dtype descriptor, shape, raw C-order bytes.
    Array(Rc<RefCell<Array>>),
    Mark,
}

/// The items of a list, tuple or dict, with its nesting depth.
#[derive(Debug, Default)]
pub struct Container<T: Items> {
    items: RefCell<T>,
    /// 1 + the depth of the deepest item (scalars have depth 0). Exact,
    /// because only unsealed containers change, and nothing holds those.
    depth: Cell<usize>,
    /// Set when the container becomes an item of another one (a tuple is
    /// sealed from birth); a sealed container is never changed again.
    sealed: Cell<bool>,
}

impl<T: Items> Container<T> {
    fn new(items: T, depth: usize, sealed: bool) -> Rc<Self> {
        Rc::new(Container { items: RefCell::new(items), depth: Cell::new(depth), sealed: Cell::new(sealed) })
    }

    /// The items.
    pub fn borrow(&self) -> Ref<'_, T> {
        self.items.borrow()
    }

    /// Nesting depth: 1 + the depth of the deepest item.
    pub fn depth(&self) -> usize {
        self.depth.get()
    }
}

/// What a [`Container`] holds: values, or key-value pairs.
pub trait Items: Default {
    /// Moves every value out into `out`.
    fn drain_into(&mut self, out: &mut Vec<Value>);
}

impl Items for Vec<Value> {
    fn drain_into(&mut self, out: &mut Vec<Value>) {
        out.append(self);
    }
}

impl Items for Vec<(Value, Value)> {
    fn drain_into(&mut self, out: &mut Vec<Value>) {
        for (k, v) in self.drain(..) {
            out.push(k);
            out.push(v);
        }
    }
}

/// Frees nested containers with a work list instead of recursion, so no
/// nesting depth can overflow the stack (parsing bounds it too): each
/// container dropped here has been emptied first.
impl<T: Items> Drop for Container<T> {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.items.get_mut().drain_into(&mut pending);
        while let Some(mut v) = pending.pop() {
            match &mut v {
                Value::List(c) | Value::Tuple(c) => {
                    if let Some(c) = Rc::get_mut(c) {
                        c.items.get_mut().drain_into(&mut pending);
                    }
                }
                Value::Dict(c) => {
                    if let Some(c) = Rc::get_mut(c) {
                        c.items.get_mut().drain_into(&mut pending);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A numpy array rebuilt by `_reconstruct` + `BUILD`.
#[derive(Clone, Debug, Default)]
pub struct Array {
    pub descr: String,
    pub shape: Vec<usize>,
    pub data: Rc<Vec<u8>>,
}

impl Value {
    /// The bytes of a string value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Looks `key` up in a dict whose keys are strings.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => {
                d.borrow().iter().find(|(k, _)| k.as_bytes() == Some(key.as_bytes())).map(|(_, v)| v.clone())
            }
            _ => None,
        }
    }

    /// Nesting depth: 0 for a scalar, 1 + the deepest item for a container.
    pub fn depth(&self) -> usize {
        match self {
            Value::List(c) | Value::Tuple(c) => c.depth(),
            Value::Dict(c) => c.depth(),
            _ => 0,
        }
    }

    /// Seals `self` if it is a container (it is becoming another one's item).
    fn seal(&self) {
        match self {
            Value::List(c) | Value::Tuple(c) => c.sealed.set(true),
            Value::Dict(c) => c.sealed.set(true),
            _ => {}
        }
    }
}

/// Makes `items` the items of a new tuple.
fn tuple(items: Vec<Value>, at: usize) -> Result<Value, String> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("tuple nested {depth} deep at byte {at} (at most {MAX_DEPTH})"));
    }
    items.iter().for_each(Value::seal);
    Ok(Value::Tuple(Container::new(items, depth, true)))
}

/// Adds `items` to the list or dict `target` (pairs for a dict).
fn extend(target: Option<&Value>, items: Vec<Value>, op: &str, at: usize) -> Result<(), String> {
    let (depth, sealed) = match target {
        Some(Value::List(c)) if op.starts_with("APPEND") => (&c.depth, &c.sealed),
        Some(Value::Dict(c)) if op.starts_with("SETITEM") => (&c.depth, &c.sealed),
        _ => return Err(format!("{op} to a {} at byte {at}", kind(target))),
    };
    if matches!(target, Some(Value::Dict(_))) && !items.len().is_multiple_of(2) {
        return Err(format!("{op} of an odd number of items at byte {at}"));
    }
    // Sealing the items first also refuses a container added to itself.
    items.iter().for_each(Value::seal);
    if sealed.get() {
        return Err(format!(
            "{op} at byte {at} changes a container already inside another one (recursive pickles are not supported)"
        ));
    }
    let new_depth = items.iter().map(|v| 1 + v.depth()).fold(depth.get(), usize::max);
    if new_depth > MAX_DEPTH {
        return Err(format!("{op} at byte {at} nests containers {new_depth} deep (at most {MAX_DEPTH})"));
    }
    depth.set(new_depth);
    match target {
        Some(Value::List(c)) => c.items.borrow_mut().extend(items),
        Some(Value::Dict(c)) => {
            let mut d = c.items.borrow_mut();
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.push((k, v));
            }
        }
        _ => unreachable!("checked above"),
    }
    Ok(())
}

fn kind(v: Option<&Value>) -> &'static str {
    match v {
        None => "empty stack",
        Some(Value::List(_)) => "list",
        Some(Value::Tuple(_)) => "tuple",
        Some(Value::Dict(_)) => "dict",
        Some(Value::Array(_)) => "array",
        Some(Value::Mark) => "MARK",
        Some(_) => "scalar",
    }
}

/// Parses one pickle. Errors say which opcode at which byte offset failed.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: Vec<Option<Value>> = Vec::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos.checked_add(n).filter(|&e| e <= bytes.len()).ok_or_else(|| format!("truncated at byte {pos}"))?;
        let s = &bytes[*pos..end];
        *pos = end;
        Ok(s)
    };
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64);
    let pop = |stack: &mut Vec<Value>, at: usize| stack.pop().ok_or_else(|| format!("stack underflow at byte {at}"));
    let pop_mark = |stack: &mut Vec<Value>, at: usize| -> Result<Vec<Value>, String> {
        let m = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| format!("no MARK for byte {at}"))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    // A memo index is at most the number of opcodes read so far: a pickler
    // numbers its memo from 0 and stores one entry per opcode at most, so a
    // larger index cannot be honest, and the memo stays as small as the input.
    let put = |memo: &mut Vec<Option<Value>>, i: u64, ops: usize, v: Option<&Value>, at: usize| {
        let v = v.cloned().ok_or_else(|| format!("memo put on an empty stack at byte {at}"))?;
        let i = usize::try_from(i).ok().filter(|&i| i <= ops).ok_or_else(|| {
            format!("memo index {i} at byte {at} exceeds the {ops} opcodes read so far (corrupt pickle)")
        })?;
        if memo.len() <= i {
            memo.resize(i + 1, None);
        }
        memo[i] = Some(v);
        Ok::<(), String>(())
    };
    let mut ops = 0usize;
    loop {
        let at = pos;
        let op = take(&mut pos, 1)?[0];
        ops += 1;
        match op {
            0x80 => {
                take(&mut pos, 1)?; // PROTO
            }
            0x95 => {
                take(&mut pos, 8)?; // FRAME: the frame is just the following bytes
            }
            b'.' => return pop(&mut stack, at),
            b'(' => stack.push(Value::Mark),
            b'}' => stack.push(Value::Dict(Container::new(Vec::new(), 1, false))),
            b']' => stack.push(Value::List(Container::new(Vec::new(), 1, false))),
            b')' => stack.push(tuple(Vec::new(), at)?),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(take(&mut pos, 1)?[0] as i64)),
            b'M' => stack.push(Value::Int(le(take(&mut pos, 2)?) as i64)),
            b'J' => stack.push(Value::Int(i32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes")) as i64)),
            0x8a => {
                let n = take(&mut pos, 1)?[0] as usize;
                if n > 8 {
                    return Err(format!("LONG1 of {n} bytes at byte {at}"));
                }
                let v = le(take(&mut pos, n)?) as i64;
                stack.push(Value::Int(if n == 0 {
                    0
                } else {
                    let shift = 64 - 8 * n as u32; // sign-extend the n-byte two's complement
                    (v << shift) >> shift
                }));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(take(&mut pos, 8)?.try_into().expect("8 bytes")))),
            b'U' | b'C' | 0x8c => {
                let n = take(&mut pos, 1)?[0] as usize;
                stack.push(Value::Bytes(Rc::new(take(&mut pos, n)?.to_vec())));
            }
            b'T' | b'X' | b'B' => {
                let n = le(take(&mut pos, 4)?);
                let n = usize::try_from(n).map_err(|_| format!("string of {n} bytes at byte {at}"))?;
                stack.push(Value::Bytes(Rc::new(take(&mut pos, n)?.to_vec())));
            }
            0x8e | 0x8d => {
                let n = le(take(&mut pos, 8)?);
                let n = usize::try_from(n).map_err(|_| format!("string of {n} bytes at byte {at}"))?;
                stack.push(Value::Bytes(Rc::new(take(&mut pos, n)?.to_vec())));
            }
            b'q' => {
                let i = take(&mut pos, 1)?[0] as u64;
                put(&mut memo, i, ops, stack.last(), at)?;
            }
            b'r' => {
                let i = le(take(&mut pos, 4)?);
                put(&mut memo, i, ops, stack.last(), at)?;
            }
            0x94 => {
                let next = memo.len() as u64;
                put(&mut memo, next, ops, stack.last(), at)?;
            }
            b'h' | b'j' => {
                let i = if op == b'h' { take(&mut pos, 1)?[0] as u64 } else { le(take(&mut pos, 4)?) };
                let v = usize::try_from(i)
                    .ok()
                    .and_then(|i| memo.get(i).cloned().flatten())
                    .ok_or_else(|| format!("memo {i} unset at byte {at}"))?;
                stack.push(v);
            }
            b'c' => {
                let line = |pos: &mut usize| -> Result<String, String> {
                    let rest = &bytes[*pos..];
                    let n = rest
                        .iter()
                        .position(|&c| c == b'\n')
                        .ok_or_else(|| format!("unterminated GLOBAL at byte {at}"))?;
                    *pos += n + 1;
                    Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
                };
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack, at)?;
                let module = pop(&mut stack, at)?;
                let s = |v: &Value| v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned());
                match (s(&module), s(&name)) {
                    (Some(m), Some(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err(format!("STACK_GLOBAL of non-strings at byte {at}")),
                }
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(format!("TUPLE{n} on a short stack at byte {at}"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(tuple(items, at)?);
            }
            b't' => {
                let items = pop_mark(&mut stack, at)?;
                stack.push(tuple(items, at)?);
            }
            b'a' => {
                let v = pop(&mut stack, at)?;
                extend(stack.last(), vec![v], "APPEND", at)?;
            }
            b'e' => {
                let items = pop_mark(&mut stack, at)?;
                extend(stack.last(), items, "APPENDS", at)?;
            }
            b's' => {
                let v = pop(&mut stack, at)?;
                let k = pop(&mut stack, at)?;
                extend(stack.last(), vec![k, v], "SETITEM", at)?;
            }
            b'u' => {
                let items = pop_mark(&mut stack, at)?;
                extend(stack.last(), items, "SETITEMS", at)?;
            }
            b'R' => {
                let args = pop(&mut stack, at)?;
                let func = pop(&mut stack, at)?;
                stack.push(reduce(&func, &args).map_err(|e| format!("{e} (REDUCE at byte {at})"))?);
            }
            b'b' => {
                let state = pop(&mut stack, at)?;
                match stack.last() {
                    Some(Value::Array(a)) => {
                        build_array(&mut a.borrow_mut(), &state).map_err(|e| format!("{e} at byte {at}"))?
                    }
                    Some(Value::Dtype(_)) => {} // byte order and flags: '|' for u1
                    _ => return Err(format!("BUILD of an unsupported object at byte {at}")),
                }
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}")),
        }
    }
}

fn reduce(func: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(module, name) = func else { return Err("REDUCE of a non-callable".into()) };
    let Value::Tuple(args) = args else { return Err("REDUCE without an argument tuple".into()) };
    let args = args.borrow();
    match (module.as_str(), name.as_str()) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
            Ok(Value::Array(Rc::new(RefCell::new(Array::default()))))
        }
        ("numpy", "dtype") => match args.first().and_then(Value::as_bytes) {
            Some(d) => Ok(Value::Dtype(String::from_utf8_lossy(d).into_owned())),
            None => Err("numpy.dtype without a descriptor".into()),
        },
        ("_codecs", "encode") => {
            // Python 3's protocol-2 form of bytes: encode(str, 'latin1').
            let text = args.first().and_then(Value::as_bytes).ok_or("encode without text")?;
            let s = std::str::from_utf8(text).map_err(|_| "encode of invalid UTF-8")?;
            let latin1: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c).ok()).collect();
            Ok(Value::Bytes(Rc::new(latin1.ok_or("encode of a character outside latin-1")?)))
        }
        _ => Err(format!("refusing to call {module}.{name}")),
    }
}

/// `ndarray.__setstate__((version, shape, dtype, fortran, data))`.
fn build_array(a: &mut Array, state: &Value) -> Result<(), String> {
    let Value::Tuple(t) = state else { return Err("array state is not a tuple".into()) };
    let t = t.borrow();
    let [_, shape, dtype, fortran, data] = t.as_slice() else {
        return Err(format!("array state of {} items", t.len()));
    };
    let Value::Tuple(dims) = shape else { return Err("array shape is not a tuple".into()) };
    a.shape = dims
        .borrow()
        .iter()
        .map(|d| match d {
            Value::Int(i) => usize::try_from(*i).map_err(|_| format!("array dimension {i}")),
            _ => Err("array dimension is not an integer".to_string()),
        })
        .collect::<Result<_, _>>()?;
    let Value::Dtype(descr) = dtype else { return Err("array dtype missing".into()) };
    a.descr = descr.clone();
    if matches!(fortran, Value::Bool(true)) {
        return Err("Fortran-order arrays are not supported".into());
    }
    let Value::Bytes(b) = data else { return Err("array data is not a byte string".into()) };
    a.data = b.clone();
    Ok(())
}

/// The official Python 2 protocol-2 pickle of a CIFAR-10 batch dict:
/// `{'batch_label': str, 'labels': [int], 'data': uint8 array [n, 3072],
/// 'filenames': [str]}` (keys and strings as `U`/`T` byte strings).
pub fn write_batch(label: &str, labels: &[u8], data: &[u8], filenames: &[String]) -> Vec<u8> {
    let n = labels.len();
    let mut o = vec![0x80, 2, b'}', b'('];
    let s = |o: &mut Vec<u8>, b: &[u8]| {
        if b.len() < 256 {
            o.push(b'U');
            o.push(b.len() as u8);
        } else {
            o.push(b'T');
            o.extend_from_slice(&(b.len() as u32).to_le_bytes());
        }
        o.extend_from_slice(b);
    };
    let int = |o: &mut Vec<u8>, v: usize| {
        if v < 256 {
            o.extend_from_slice(&[b'K', v as u8]);
        } else if v < 65536 {
            o.push(b'M');
            o.extend_from_slice(&(v as u16).to_le_bytes());
        } else {
            o.push(b'J');
            o.extend_from_slice(&(v as i32).to_le_bytes());
        }
    };
    s(&mut o, b"data");
    o.extend_from_slice(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n");
    o.extend_from_slice(&[b'K', 0, 0x85]);
    s(&mut o, b"b");
    o.extend_from_slice(&[0x87, b'R', b'(', b'K', 1]);
    int(&mut o, n);
    int(&mut o, 3072);
    o.push(0x86);
    o.extend_from_slice(b"cnumpy\ndtype\n");
    s(&mut o, b"u1");
    o.extend_from_slice(&[b'K', 0, b'K', 1, 0x87, b'R', b'(', b'K', 3]);
    s(&mut o, b"|");
    o.extend_from_slice(b"NNN");
    o.extend_from_slice(&[b'J', 0xff, 0xff, 0xff, 0xff, b'J', 0xff, 0xff, 0xff, 0xff, b'K', 0, b't', b'b', 0x89]);
    s(&mut o, data);
    o.extend_from_slice(b"tb");
    s(&mut o, b"labels");
    o.extend_from_slice(b"](");
    for &l in labels {
        int(&mut o, l as usize);
    }
    o.push(b'e');
    s(&mut o, b"batch_label");
    s(&mut o, label.as_bytes());
    s(&mut o, b"filenames");
    o.extend_from_slice(b"](");
    for f in filenames {
        s(&mut o, f.as_bytes());
    }
    o.extend_from_slice(b"eu.");
    o
}

/// The pickle of `batches.meta`: `{'label_names': [..], 'num_cases_per_batch': n, 'num_vis': 3072}`.
pub fn write_meta(names: &[&str], per_batch: usize) -> Vec<u8> {
    let mut o = vec![0x80, 2, b'}', b'(', b'U', 11];
    o.extend_from_slice(b"label_names](");
    for n in names {
        o.push(b'U');
        o.push(n.len() as u8);
        o.extend_from_slice(n.as_bytes());
    }
    o.extend_from_slice(b"eU\x13num_cases_per_batchJ");
    o.extend_from_slice(&(per_batch as i32).to_le_bytes());
    o.extend_from_slice(b"U\x07num_visM\x00\x0cu.");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built directly, past the depth limit parsing enforces: dropping it
    /// must not recurse once per level (10⁶ frames overflow a test thread's stack).
    #[test]
    fn dropping_a_value_nested_a_million_deep_does_not_recurse() {
        let mut v = Value::None;
        for i in 0..1_000_000 {
            let items = vec![v, Value::Int(i)];
            v = if i % 2 == 0 {
                Value::List(Container::new(items, 0, true))
            } else {
                Value::Dict(Container::new(vec![(Value::None, Value::Tuple(Container::new(items, 0, true)))], 0, true))
            };
        }
        drop(v);
    }
}
