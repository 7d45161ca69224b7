//! The pickle virtual machine: protocols 0–5, iterative (a stack of ids, never Rust recursion),
//! with a memo that shares values by reference.
//!
//! It executes nothing. `GLOBAL` asks the [`Hooks::find_class`] hook, which may refuse;
//! persistent ids go to [`Hooks::persistent_load`]; calls and `BUILD`s are recorded in the
//! [`Arena`]. Every length the input declares is checked against the bytes that remain before
//! anything is allocated, so memory stays proportional to the input.

use super::value::{decimal_to_bigint, Arena, Call, CallKind, DictItems, Node, NodeId, Span};
use super::{opcode_name, Hooks, LimitHit, PickleError, PickleLimits, StringEncoding};

/// Runs one pickle to its `STOP` and returns the id of the result.
pub struct Machine<'a, H: Hooks> {
    input: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for errors).
    op_pos: usize,
    op: u8,
    stack: Vec<NodeId>,
    marks: Vec<usize>,
    memo: Memo,
    /// PUTs to a memo index already set (legal: Python rebinds it).
    memo_rebinds: usize,
    /// DUPs run (each shares one object between two places, as Python does).
    dups: usize,
    arena: &'a mut Arena,
    hooks: &'a mut H,
    limits: PickleLimits,
    encoding: StringEncoding,
}

type Result<T> = std::result::Result<T, PickleError>;

/// The most stack slots a machine makes room for before it runs.
const STACK_RESERVED: usize = 2048 + 8;
/// The most memo entries a machine makes room for before it runs.
const MEMO_RESERVED: usize = 1 << 16;

/// The memo: index → node. Picklers number their entries 0, 1, 2, … in order, so those live in
/// a vector; any other index (a hostile `LONG_BINPUT 4000000000`) goes to a hash map, so an index
/// costs memory only for the entries that exist.
#[derive(Default)]
struct Memo {
    /// Slot `i` holds index `i`'s node (it only grows by the next index, so has no holes).
    dense: Vec<NodeId>,
    /// Indices past the end of `dense` when they were set.
    sparse: foldhash::HashMap<u64, NodeId>,
    /// Entries set (dense and sparse).
    len: usize,
}

impl Memo {
    fn get(&self, index: u64) -> Option<NodeId> {
        match usize::try_from(index).ok().and_then(|i| self.dense.get(i)) {
            Some(&id) => Some(id),
            None => self.sparse.get(&index).copied(),
        }
    }

    /// Sets `index`; returns the node it held before, if any.
    fn insert(&mut self, index: u64, id: NodeId) -> Option<NodeId> {
        let old = match usize::try_from(index) {
            Ok(i) if i < self.dense.len() => Some(std::mem::replace(&mut self.dense[i], id)),
            Ok(i) if i == self.dense.len() && !self.sparse.contains_key(&index) => {
                self.dense.push(id);
                None
            }
            _ => self.sparse.insert(index, id),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl<'a, H: Hooks> Machine<'a, H> {
    /// A machine over `input` that adds its nodes to `arena`.
    pub fn new(
        input: &'a [u8],
        arena: &'a mut Arena,
        hooks: &'a mut H,
        limits: PickleLimits,
        encoding: StringEncoding,
    ) -> Self {
        Machine {
            input,
            pos: 0,
            op_pos: 0,
            op: 0,
            // Torch's pickles set items in batches of 1000 pairs: room for one batch, less for
            // small pickles.
            stack: Vec::with_capacity((input.len() / 8).min(STACK_RESERVED)),
            marks: Vec::new(),
            memo: Memo {
                dense: Vec::with_capacity((input.len() / 16).min(MEMO_RESERVED)),
                ..Memo::default()
            },
            memo_rebinds: 0,
            dups: 0,
            arena,
            hooks,
            limits,
            encoding,
        }
    }

    /// Offset just past the `STOP` once [`Machine::run`] returned (where a next pickle starts).
    /// How many PUTs rebound a memo index already set.
    pub fn memo_rebinds(&self) -> usize {
        self.memo_rebinds
    }

    /// How many DUPs ran.
    pub fn dups(&self) -> usize {
        self.dups
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    #[cold]
    #[inline(never)]
    fn err(&self, message: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.op_pos as u64,
            opcode: Some(self.op),
            message: message.into(),
            limit: None,
        }
    }

    /// The error for an exceeded bound: `limit` is the `Limits` field that sets it.
    #[cold]
    #[inline(never)]
    fn limit_err(&self, limit: &'static str, value: usize, max: usize, what: &str) -> PickleError {
        PickleError {
            limit: Some(LimitHit {
                limit,
                value: value as u64,
                max: max as u64,
            }),
            ..self.err(format!("limit {limit} exceeded: more than {max} {what}"))
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.input.len());
        match end {
            Some(end) => {
                let s = &self.input[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.truncated(n)),
        }
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, n: usize) -> PickleError {
        self.err(format!(
            "needs {n} bytes but only {} remain (truncated pickle?)",
            self.input.len() - self.pos
        ))
    }

    /// The next `N` bytes, as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.input.get(self.pos..self.pos + N) {
            Some(bytes) => {
                self.pos += N;
                Ok(bytes.try_into().unwrap_or([0; N]))
            }
            None => Err(self.truncated(N)),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn len_u64(&mut self, declared: u64) -> Result<usize> {
        let remaining = (self.input.len() - self.pos) as u64;
        if declared > remaining {
            return Err(self.err(format!(
                "declares a length of {declared} bytes but only {remaining} remain"
            )));
        }
        Ok(declared as usize)
    }
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.input[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                let line = &rest[..i];
                Ok(line.strip_suffix(b"\r").unwrap_or(line))
            }
            None => Err(self.err("a text argument has no terminating newline")),
        }
    }
    fn line_str(&mut self) -> Result<&'a str> {
        let line = self.line()?;
        super::encoding::utf8(line).ok_or_else(|| self.err("a text argument is not valid UTF-8"))
    }

    /// The memo index on a text opcode's line (`PUT`/`GET`, protocol 0), `op` naming it.
    fn line_index(&mut self, op: &str) -> Result<u64> {
        let text = self.line_str()?;
        text.parse::<u64>()
            .map_err(|_| self.err(format!("invalid {op} index {text:?}")))
    }

    #[inline(never)]
    fn push_node(&mut self, node: Node) -> Result<()> {
        if self.arena.len() >= self.limits.max_nodes {
            return Err(self.limit_err(
                "max_pickle_nodes",
                self.arena.len() + 1,
                self.limits.max_nodes,
                "objects",
            ));
        }
        let id = self.arena.push(node);
        self.stack.push(id);
        Ok(())
    }

    fn new_node(&mut self, node: Node) -> Result<NodeId> {
        if self.arena.len() >= self.limits.max_nodes {
            return Err(self.limit_err(
                "max_pickle_nodes",
                self.arena.len() + 1,
                self.limits.max_nodes,
                "objects",
            ));
        }
        Ok(self.arena.push(node))
    }

    fn pop(&mut self) -> Result<NodeId> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("unpickling stack underflow"));
        }
        Ok(self.stack.pop().unwrap_or_default())
    }

    /// Where the top `n` items start, when a target lies below them (all above the last mark):
    /// the target is `stack[at - 1]`.
    fn above_target(&self, n: usize) -> Result<usize> {
        let at = self.stack.len().saturating_sub(n);
        self.below(at)?;
        Ok(at)
    }

    /// The item just below `at` (a mark just popped), which must lie above the last mark left.
    fn below(&self, at: usize) -> Result<NodeId> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if at <= floor {
            return Err(self.err("unpickling stack underflow"));
        }
        Ok(self.stack[at - 1])
    }

    fn top(&self) -> Result<NodeId> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("unpickling stack underflow"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn pop_mark(&mut self) -> Result<Vec<NodeId>> {
        let at = self.pop_mark_at()?;
        Ok(self.stack.split_off(at))
    }

    /// Pops the last mark; the items above it are `self.stack[at..]`, for the caller to take
    /// (and truncate) without a vector of their own.
    fn pop_mark_at(&mut self) -> Result<usize> {
        self.marks
            .pop()
            .ok_or_else(|| self.err("could not find MARK"))
    }

    /// A tuple of the stack's items from `at` on, which leave the stack.
    fn push_tuple_from(&mut self, at: usize) -> Result<()> {
        let node = self.arena.tuple_node(&self.stack[at..]);
        self.stack.truncate(at);
        self.push_node(node)
    }

    fn push_str(&mut self, text: &str) -> Result<()> {
        let node = self.arena.str_node(text);
        self.push_node(node)
    }

    fn memo_put(&mut self, index: u64) -> Result<()> {
        let top = self.top()?;
        // Picklers number entries 0, 1, 2, …: the next dense index, while nothing is sparse,
        // is new and goes straight to the end.
        let memo = &mut self.memo;
        if index == memo.dense.len() as u64
            && memo.sparse.is_empty()
            && memo.len < self.limits.max_memo
        {
            memo.dense.push(top);
            memo.len += 1;
            return Ok(());
        }
        if self.memo.get(index).is_none() && self.memo.len() >= self.limits.max_memo {
            return Err(self.limit_err(
                "max_memo_entries",
                self.memo.len() + 1,
                self.limits.max_memo,
                "memo entries",
            ));
        }
        if self.memo.insert(index, top).is_some() {
            self.memo_rebinds += 1;
        }
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<()> {
        match self.memo.get(index) {
            Some(id) => {
                self.stack.push(id);
                Ok(())
            }
            None => Err(self.err(format!("memo slot {index} was never set"))),
        }
    }

    /// Pushes what the hooks' `persistent_load` makes of `pid` (`BINPERSID`, `PERSID`).
    fn persistent_load(&mut self, pid: NodeId) -> Result<()> {
        let id = self
            .hooks
            .persistent_load(self.arena, pid)
            .map_err(|m| self.err(m))?;
        self.stack.push(id);
        Ok(())
    }

    #[inline(never)]
    fn global(&mut self, module: &str, name: &str) -> Result<NodeId> {
        let (module, name) = self
            .hooks
            .find_class(module, name)
            .map_err(|m| self.err(m))?;
        let node = self.arena.global_node(module, name);
        self.new_node(node)
    }

    fn py2_string(&mut self, bytes: Vec<u8>) -> Result<()> {
        let node = match super::decode_py2_string(bytes, self.encoding) {
            Ok(super::Decoded::Str(s)) => self.arena.str_node(&s),
            Ok(super::Decoded::Bytes(b)) => Node::Bytes(b),
            Err(m) => {
                return Err(self.err(format!(
                    "{m} (a Python 2 string; load with encoding latin1 or bytes)"
                )))
            }
        };
        self.push_node(node)
    }

    #[inline(never)]
    fn call(
        &mut self,
        callable: NodeId,
        args: NodeId,
        kwargs: Option<NodeId>,
        kind: CallKind,
    ) -> Result<()> {
        let node = self.arena.call_node(Call {
            callable,
            args,
            kwargs,
            kind,
            state: Vec::new(),
            list_items: Vec::new(),
            dict_items: Vec::new(),
        });
        self.push_node(node)
    }

    /// Appends the stack's items from `at` on (which leave the stack) to `target`.
    #[inline(never)]
    fn append(&mut self, target: NodeId, at: usize) -> Result<()> {
        let items = &self.stack[at..];
        match *self.arena.get_mut(target) {
            Node::List(ref mut list) => list.extend_from_slice(items),
            Node::Call(call) => self
                .arena
                .call_mut(call)
                .list_items
                .extend_from_slice(items),
            _ => {
                let kind = self.arena.kind_name(target);
                return Err(self.err(format!("cannot append to a {kind}")));
            }
        }
        self.stack.truncate(at);
        Ok(())
    }

    /// Sets the stack's items from `at` on (key, value, key, value, …; they leave the stack)
    /// on `target`.
    #[inline(never)]
    fn set_items(&mut self, target: NodeId, at: usize) -> Result<()> {
        let flat = &self.stack[at..];
        if flat.len() % 2 != 0 {
            return Err(self.err("odd number of items for SETITEMS"));
        }
        let pairs = flat.chunks_exact(2).map(|c| (c[0], c[1]));
        match *self.arena.get_mut(target) {
            // Repeated keys are kept here and merged when the tree is built (later layers know
            // key equality; doing it here would cost a scan per insert).
            Node::Dict(ref mut items) => items.extend(pairs),
            Node::Call(call) => self.arena.call_mut(call).dict_items.extend(pairs),
            _ => {
                let kind = self.arena.kind_name(target);
                return Err(self.err(format!("cannot set items on a {kind}")));
            }
        }
        self.stack.truncate(at);
        Ok(())
    }

    /// Executes opcodes until `STOP` and returns the result's id. (Not inlined: its callers
    /// stay small; see [`rare_opcode`](Self::rare_opcode).)
    #[inline(never)]
    pub fn run(&mut self) -> Result<NodeId> {
        loop {
            self.op_pos = self.pos;
            if self.pos >= self.input.len() {
                self.op = 0;
                return Err(PickleError {
                    offset: self.pos as u64,
                    opcode: None,
                    message: "pickle data was truncated (no STOP opcode)".into(),
                    limit: None,
                });
            }
            let op = self.input[self.pos];
            self.op = op;
            self.pos += 1;
            match op {
                // --- protocol and framing
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol: {proto}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint; the framed opcodes follow inline.
                    self.u64()?;
                }
                b'.' => {
                    let result = self.pop()?;
                    return Ok(result);
                }
                // --- stack manipulation
                b'(' => self.marks.push(self.stack.len()),
                // --- constants
                b'N' => self.push_node(Node::None)?,
                0x88 => self.push_node(Node::Bool(true))?,
                0x89 => self.push_node(Node::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push_node(Node::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_node(Node::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_node(Node::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        let n = self.u32()? as i32;
                        if n < 0 {
                            return Err(self.err("LONG4 with a negative byte count"));
                        }
                        n as u64
                    };
                    let n = self.len_u64(n)?;
                    let bytes = self.take(n)?;
                    self.push_node(long_node(bytes))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push_node(Node::Float(f64::from_be_bytes(a)))?
                }
                // --- strings and bytes
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_u64(n)?;
                    let bytes = self.take(n)?;
                    let s = super::encoding::utf8(bytes)
                        .ok_or_else(|| self.err("a str is not valid UTF-8"))?;
                    self.push_str(s)?
                }
                // --- containers
                b')' => self.push_node(Node::Tuple(Span::default()))?,
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(self.err("unpickling stack underflow"));
                    }
                    self.push_tuple_from(self.stack.len() - n)?
                }
                b't' => {
                    let at = self.pop_mark_at()?;
                    self.push_tuple_from(at)?
                }
                b']' => self.push_node(Node::List(Vec::new()))?,
                b'}' => self.push_node(Node::Dict(DictItems::new()))?,
                b'a' => {
                    let at = self.above_target(1)?;
                    self.append(self.stack[at - 1], at)?
                }
                b'e' => {
                    let at = self.pop_mark_at()?;
                    let target = self.below(at)?;
                    self.append(target, at)?
                }
                b's' => {
                    let at = self.above_target(2)?;
                    self.set_items(self.stack[at - 1], at)?
                }
                b'u' => {
                    let at = self.pop_mark_at()?;
                    let target = self.below(at)?;
                    self.set_items(target, at)?
                }
                // --- memo
                // One arm per operation, so that `memo_put` and `memo_get` are inlined once.
                b'q' | b'r' | 0x94 => {
                    let i = match op {
                        b'q' => self.u8()? as u64,
                        b'r' => self.u32()? as u64,
                        _ => self.memo.len() as u64,
                    };
                    self.memo_put(i)?
                }
                b'h' | b'j' => {
                    let i = if op == b'h' {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    self.memo_get(i)?
                }
                // --- globals, calls, objects
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let id = self.global(module, name)?;
                    self.stack.push(id);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.arena.str(module), self.arena.str(name))
                    else {
                        return Err(self.err("STACK_GLOBAL requires str module and name"));
                    };
                    let (module, name) = (module.to_owned(), name.to_owned());
                    let id = self.global(&module, &name)?;
                    self.stack.push(id);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    if self.arena.tuple(args).is_none() {
                        return Err(self.err(format!(
                            "REDUCE arguments must be a tuple, not a {}",
                            self.arena.kind_name(args)
                        )));
                    }
                    self.call(callable, args, None, CallKind::Reduce)?
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    if self.arena.tuple(args).is_none() {
                        return Err(self.err(format!(
                            "NEWOBJ arguments must be a tuple, not a {}",
                            self.arena.kind_name(args)
                        )));
                    }
                    self.call(cls, args, None, CallKind::NewObj)?
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    match *self.arena.get(target) {
                        Node::Call(call) => self.arena.call_mut(call).state.push(state),
                        _ => {
                            let kind = self.arena.kind_name(target);
                            return Err(self.err(format!("BUILD on a {kind} is not supported")));
                        }
                    }
                }
                // --- persistent ids
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent_load(pid)?
                }
                _ => self.rare_opcode(op)?,
            }
            if self.stack.len() > self.limits.max_stack {
                // The loader derives the stack bound from `Limits::max_pickle_nodes`.
                return Err(self.limit_err(
                    "max_pickle_nodes",
                    self.stack.len(),
                    self.limits.max_stack,
                    "values on the stack",
                ));
            }
        }
    }

    /// The opcodes that `torch.save`'s pickles (protocol 2) seldom or never hold: protocol 0-1
    /// text forms, bytes, sets, stack copies and discards, `OBJ`/`INST`/`NEWOBJ_EX`, and unknown
    /// ones. Apart from [`run`](Self::run) so that its loop stays small: a wasm engine compiles a
    /// hot function again with its optimizing compiler, in time that grows faster than the
    /// function. In a fresh Node process (V8, a 2-core VM) that compile of a 34 KiB `run` took
    /// 0.2-0.35 s of a background thread while the load went on; of the 14 KiB one, 0.02-0.12 s.
    #[inline(never)]
    fn rare_opcode(&mut self, op: u8) -> Result<()> {
        match op {
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                let at = self.pop_mark_at()?;
                self.stack.truncate(at);
            }
            b'2' => {
                let top = self.top()?;
                self.stack.push(top);
                self.dups += 1;
            }
            b'I' => {
                let text = self.line_str()?;
                let node = match text {
                    "01" => Node::Bool(true),
                    "00" => Node::Bool(false),
                    _ => int_text(text)
                        .ok_or_else(|| self.err(format!("invalid INT literal {text:?}")))?,
                };
                self.push_node(node)?
            }
            b'L' => {
                let text = self.line_str()?;
                let text = text.strip_suffix('L').unwrap_or(text);
                let node = int_text(text)
                    .ok_or_else(|| self.err(format!("invalid LONG literal {text:?}")))?;
                self.push_node(node)?
            }
            b'F' => {
                let text = self.line_str()?;
                let v = parse_py_float(text)
                    .ok_or_else(|| self.err(format!("invalid FLOAT literal {text:?}")))?;
                self.push_node(Node::Float(v))?
            }
            b'V' => {
                let line = self.line()?;
                let s =
                    raw_unicode_escape(line).ok_or_else(|| self.err("invalid UNICODE literal"))?;
                self.push_str(&s)?
            }
            b'U' | b'T' => {
                let n = if op == b'U' {
                    self.u8()? as u64
                } else {
                    self.u32()? as u64
                };
                let n = self.len_u64(n)?;
                let bytes = self.take(n)?.to_vec();
                self.py2_string(bytes)?
            }
            b'S' => {
                let line = self.line()?;
                let bytes =
                    py_string_literal(line).ok_or_else(|| self.err("invalid STRING literal"))?;
                self.py2_string(bytes)?
            }
            b'C' | b'B' | 0x8e | 0x96 => {
                let n = match op {
                    b'C' => self.u8()? as u64,
                    b'B' => self.u32()? as u64,
                    _ => self.u64()?,
                };
                let n = self.len_u64(n)?;
                let bytes = self.take(n)?.to_vec();
                let node = if op == 0x96 {
                    Node::ByteArray(bytes)
                } else {
                    Node::Bytes(bytes)
                };
                self.push_node(node)?
            }
            0x97 => return Err(self.err("out-of-band buffers (NEXT_BUFFER) are not supported")),
            0x98 => {
                self.top()?;
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push_node(Node::List(items))?
            }
            b'd' => {
                let at = self.pop_mark_at()?;
                if (self.stack.len() - at) % 2 != 0 {
                    return Err(self.err("odd number of items for DICT"));
                }
                let pairs = self.stack[at..]
                    .chunks_exact(2)
                    .map(|c| (c[0], c[1]))
                    .collect();
                self.stack.truncate(at);
                self.push_node(Node::Dict(pairs))?
            }
            0x8f => self.push_node(Node::Set(Vec::new()))?,
            0x91 => {
                let items = self.pop_mark()?;
                self.push_node(Node::FrozenSet(items))?
            }
            0x90 => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                match self.arena.get_mut(target) {
                    Node::Set(set) => set.extend(items),
                    _ => {
                        let kind = self.arena.kind_name(target);
                        return Err(self.err(format!("cannot add items to a {kind}")));
                    }
                }
            }
            b'p' => {
                let i = self.line_index("PUT")?;
                self.memo_put(i)?
            }
            b'g' => {
                let i = self.line_index("GET")?;
                self.memo_get(i)?
            }
            0x82..=0x84 => {
                return Err(
                    self.err("the copyreg extension registry (EXT1/EXT2/EXT4) is not supported")
                )
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                if self.arena.tuple(args).is_none()
                    || !matches!(self.arena.get(kwargs), Node::Dict(_))
                {
                    return Err(self.err("NEWOBJ_EX needs a tuple and a dict"));
                }
                self.call(cls, args, Some(kwargs), CallKind::NewObj)?
            }
            b'o' => {
                let at = self.pop_mark_at()?;
                if self.stack.len() == at {
                    return Err(self.err("OBJ without a class"));
                }
                let cls = self.stack[at];
                let node = self.arena.tuple_node(&self.stack[at + 1..]);
                self.stack.truncate(at);
                let args = self.new_node(node)?;
                self.call(cls, args, None, CallKind::Inst)?
            }
            b'i' => {
                let module = self.line_str()?;
                let name = self.line_str()?;
                let at = self.pop_mark_at()?;
                let cls = self.global(module, name)?;
                let node = self.arena.tuple_node(&self.stack[at..]);
                self.stack.truncate(at);
                let args = self.new_node(node)?;
                self.call(cls, args, None, CallKind::Inst)?
            }
            b'P' => {
                let text = self.line_str()?;
                let node = self.arena.str_node(text);
                let pid = self.new_node(node)?;
                self.persistent_load(pid)?
            }
            _ => {
                return Err(self.err(format!(
                    "unknown opcode 0x{op:02x}{}",
                    if opcode_name(op).is_some() {
                        ""
                    } else {
                        " (not a pickle opcode)"
                    }
                )))
            }
        }
        Ok(())
    }
}

/// A LONG1/LONG4 payload: an `Int` when its value fits in 64 bits (however many bytes encode
/// it: Python's own `encode_long` is minimal, other picklers need not be), else a `BigInt`.
fn long_node(mut bytes: &[u8]) -> Node {
    // Sign bytes past the eighth add nothing to the value.
    while let [rest @ .., below, top] = bytes {
        let redundant = (*top == 0 && below & 0x80 == 0) || (*top == 0xff && below & 0x80 != 0);
        if bytes.len() <= 8 || !redundant {
            break;
        }
        bytes = &bytes[..rest.len() + 1];
    }
    if bytes.is_empty() {
        return Node::Int(0);
    }
    if bytes.len() <= 8 {
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
        a[..bytes.len()].copy_from_slice(bytes);
        return Node::Int(i64::from_le_bytes(a));
    }
    Node::BigInt(bytes.to_vec())
}

/// Text int (INT/LONG opcodes): `Int` if it fits, else `BigInt`.
fn int_text(text: &str) -> Option<Node> {
    if let Ok(v) = text.parse::<i64>() {
        return Some(Node::Int(v));
    }
    decimal_to_bigint(text).map(Node::BigInt)
}

/// Python's float text (repr), including `inf`, `nan`.
fn parse_py_float(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok()
}

/// Decodes protocol-0 `UNICODE` (raw-unicode-escape), as CPython does: `\uXXXX` and
/// `\UXXXXXXXX` escapes (only after an odd run of backslashes: `\\u0041` is kept as it is),
/// other bytes as Latin-1.
fn raw_unicode_escape(line: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    // Backslashes just before `i`, in a row.
    let mut backslashes = 0usize;
    while i < line.len() {
        let b = line[i];
        let escape = match line.get(i + 1) {
            Some(b'u') => 4,
            Some(b'U') => 8,
            _ => 0,
        };
        if b == b'\\' && backslashes % 2 == 0 && escape > 0 {
            let hex = line.get(i + 2..i + 2 + escape)?;
            out.push(char::from_u32(hex_value(hex)?)?);
            i += 2 + escape;
            backslashes = 0;
        } else {
            backslashes = if b == b'\\' { backslashes + 1 } else { 0 };
            out.push(b as char);
            i += 1;
        }
    }
    Some(out)
}

/// The value of hex digits (and nothing else: no sign, no spaces), as Python's escapes read them.
fn hex_value(digits: &[u8]) -> Option<u32> {
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Decodes protocol-0 `STRING`: a Python 2 repr in single or double quotes, with escapes.
fn py_string_literal(line: &[u8]) -> Option<Vec<u8>> {
    let quote = *line.first()?;
    if !(quote == b'\'' || quote == b'"') || line.len() < 2 || *line.last()? != quote {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let e = *body.get(i + 1)?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'\n' => {}
            b'x' => {
                out.push(hex_value(body.get(i..i + 2)?)? as u8);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < body.len() && (b'0'..=b'7').contains(&body[i]) {
                    v = v * 8 + (body[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::value::bigint_to_decimal;
    use super::super::{load_pickle, NoHooks};
    use super::*;

    fn run(bytes: &[u8]) -> std::result::Result<(Arena, NodeId), PickleError> {
        let mut arena = Arena::new();
        let id = load_pickle(
            bytes,
            &mut arena,
            &mut NoHooks,
            PickleLimits::default(),
            StringEncoding::Utf8,
        )?
        .0;
        Ok((arena, id))
    }

    #[test]
    fn memo_keeps_sequential_indices_dense_and_others_sparse() {
        let mut memo = Memo::default();
        assert_eq!(memo.insert(0, 10), None);
        assert_eq!(memo.insert(1, 11), None);
        assert_eq!(
            memo.dense,
            vec![10, 11],
            "sequential indices are stored densely"
        );
        assert_eq!(memo.insert(4_000_000_000, 12), None);
        assert_eq!(memo.insert(3, 13), None, "a gap goes to the sparse map");
        assert_eq!(memo.dense.len(), 2, "no slots are allocated for a gap");
        assert_eq!(memo.sparse.len(), 2);
        assert_eq!(memo.len(), 4);
        for (index, id) in [(0, 10), (1, 11), (3, 13), (4_000_000_000, 12)] {
            assert_eq!(memo.get(index), Some(id), "index {index}");
        }
        assert_eq!(memo.get(2), None);
        assert_eq!(memo.get(u64::MAX), None);
    }

    #[test]
    fn memo_rebinding_returns_the_old_node_and_keeps_the_count() {
        let mut memo = Memo::default();
        memo.insert(0, 1);
        memo.insert(7, 2);
        assert_eq!(memo.insert(0, 3), Some(1), "dense rebind");
        assert_eq!(memo.insert(7, 4), Some(2), "sparse rebind");
        assert_eq!(memo.len(), 2);
        assert_eq!((memo.get(0), memo.get(7)), (Some(3), Some(4)));
    }

    #[test]
    fn memo_index_set_sparse_first_stays_in_one_place() {
        // 1 is set while the vector is empty (sparse); 0 then fills the vector up to 1, which
        // must rebind the sparse entry, not add a second one.
        let mut memo = Memo::default();
        memo.insert(1, 5);
        memo.insert(0, 6);
        assert_eq!(memo.insert(1, 7), Some(5));
        assert_eq!(memo.len(), 2);
        assert_eq!((memo.get(0), memo.get(1)), (Some(6), Some(7)));
    }

    #[test]
    fn protocol2_dict_with_memo_sharing() {
        // pickle.dumps({'a': [1, 2], 'b': 'x'}, protocol=2) with the list memoized and reused:
        // {'a': L, 'b': L} where L = [1, 2]
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02eX\x01\x00\x00\x00bq\x03h\x02u.";
        let (arena, root) = run(bytes).unwrap();
        let Node::Dict(items) = arena.get(root) else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].1, items[1].1, "memo shares by reference");
        let Node::List(list) = arena.get(items[0].1) else {
            panic!()
        };
        let ints: Vec<_> = list.iter().map(|&i| arena.get(i).clone()).collect();
        assert_eq!(ints, vec![Node::Int(1), Node::Int(2)]);
    }

    #[test]
    fn big_ints_and_floats() {
        // pickle.dumps([2**70, -1, 1.5], protocol=2)
        let bytes = b"\x80\x02]q\x00(\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@J\xff\xff\xff\xffG?\xf8\x00\x00\x00\x00\x00\x00e.";
        let (arena, root) = run(bytes).unwrap();
        let Node::List(items) = arena.get(root) else {
            panic!()
        };
        assert!(matches!(arena.get(items[0]), Node::BigInt(_)));
        assert_eq!(arena.get(items[1]), &Node::Int(-1));
        assert_eq!(arena.get(items[2]), &Node::Float(1.5));
    }

    #[test]
    fn protocol0_text_opcodes() {
        // pickle.dumps([1, 'a', 2.5, True], protocol=0)
        let bytes = b"(lp0\nI1\naVa\np1\naF2.5\naI01\na.";
        let (arena, root) = run(bytes).unwrap();
        let Node::List(items) = arena.get(root) else {
            panic!()
        };
        assert_eq!(arena.get(items[0]), &Node::Int(1));
        assert_eq!(arena.str(items[1]), Some("a"));
        assert_eq!(arena.get(items[2]), &Node::Float(2.5));
        assert_eq!(arena.get(items[3]), &Node::Bool(true));
    }

    #[test]
    fn protocol0_memo_puts_and_gets() {
        // pickle.dumps(['x', 'x'], protocol=0) with the memo kept for the second 'x' (pickle
        // writes `g1` for a repeated object): PUT 1 then GET 1 give the same node.
        let (arena, root) = run(b"(lp0\nVx\np1\nag1\na.").unwrap();
        let Node::List(items) = arena.get(root) else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1]);
        assert_eq!(arena.str(items[0]), Some("x"));
        // GET of an index never put; indexes that are not numbers, named by their opcode.
        let err = run(b"(lp0\nVx\np1\nag2\na.").unwrap_err().to_string();
        assert!(err.contains("memo slot 2 was never set"), "{err}");
        for (bytes, want) in [
            (&b"(lp0\nVx\npx1\na."[..], "invalid PUT index \"x1\""),
            (b"(lp0\nVx\np1\nag-1\na.", "invalid GET index \"-1\""),
        ] {
            let err = run(bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn protocol0_strings_decode_as_cpython_does() {
        // Expected values: CPython 3.11, `codecs.escape_decode(body)` (what pickle's STRING
        // opcode runs on the text between the quotes); `None` where it raises.
        for (line, want) in [
            (&br"'a\x00\n\'b'"[..], Some(&b"a\x00\n'b"[..])),
            (br"'a\nb'", Some(b"a\nb")),
            (br"'\t\r\a\b\f\v'", Some(b"\t\r\x07\x08\x0c\x0b")),
            (br#"'\\\'\"'"#, Some(b"\\'\"")),
            (br"'\x41\x7a'", Some(b"Az")),
            (br"'\101\7\08\1234'", Some(b"A\x07\x008S4")),
            (br"'\777'", Some(b"\xff")),
            (br"'\7'", Some(b"\x07")),
            (br"'a\12'", Some(b"a\n")),
            (br"'\q\z'", Some(br"\q\z")),
            (br"'abc\\'", Some(br"abc\")),
            (br#""dq""#, Some(b"dq")),
            (br"''", Some(b"")),
            (br"'\x4'", None),
            (br"'\xzz'", None),
            (br"'\x+f'", None),
            (br"'abc\'", None),
            // Not quoted alike at both ends: "the STRING opcode argument must be quoted".
            (br#"'abc""#, None),
            (b"abc", None),
            (b"'", None),
            (b"", None),
        ] {
            assert_eq!(
                py_string_literal(line).as_deref(),
                want,
                "{}",
                line.escape_ascii()
            );
        }
    }

    #[test]
    fn protocol0_unicode_decodes_as_cpython_does() {
        // Expected values: CPython 3.11, `line.decode("raw-unicode-escape")`; `None` where it
        // raises (and for lone surrogates, which a Rust string cannot hold).
        for (line, want) in [
            (&br"caf\u00e9"[..], Some("caf\u{e9}")),
            (br"\U0001F600x", Some("\u{1F600}x")),
            (br"x\u0041\u0042", Some("xAB")),
            (br"a\b", Some(r"a\b")),
            (br"a\\", Some(r"a\\")),
            (br"\\u0041", Some(r"\\u0041")),
            (br"\\\u0041", Some(r"\\A")),
            (br"\u0041\\u0042", Some(r"A\\u0042")),
            (b"\xe9", Some("\u{e9}")),
            (b"", Some("")),
            (br"\u12", None),
            (br"\u00", None),
            (br"\u+041", None),
            (br"\U0011ffff", None),
            (br"\ud800", None),
        ] {
            assert_eq!(
                raw_unicode_escape(line).as_deref(),
                want,
                "{}",
                line.escape_ascii()
            );
        }
    }

    #[test]
    fn errors_name_offset_and_opcode() {
        let err = run(b"\x80\x02h\x05.").unwrap_err();
        assert_eq!(
            err.to_string(),
            "byte 0x2, opcode BINGET: memo slot 5 was never set"
        );
        let err = run(b"\x80\x02.").unwrap_err();
        assert_eq!(
            err.to_string(),
            "byte 0x2, opcode STOP: unpickling stack underflow"
        );
        let err = run(b"\x80\x02X\xff\xff\xff\xffab").unwrap_err();
        assert!(
            err.to_string()
                .contains("declares a length of 4294967295 bytes"),
            "{err}"
        );
        let err = run(b"\x80\x02K").unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = run(b"").unwrap_err();
        assert!(err.to_string().contains("no STOP"), "{err}");
    }

    #[test]
    fn a_length_reaching_exactly_the_end_of_the_input_is_read() {
        // The str takes every remaining byte: it is read, and only the missing STOP is wrong.
        for bytes in [&b"\x80\x02\x8c\x03abc"[..], b"\x80\x02C\x02\x00\x01"] {
            let err = run(bytes).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "byte 0x{:X}: pickle data was truncated (no STOP opcode)",
                    bytes.len()
                )
            );
        }
    }

    #[test]
    fn an_object_acting_as_a_list_keeps_its_appended_items() {
        // pickle.dumps(L([1, 2]), protocol=2) for `class L(list)` in __main__.
        let bytes = b"\x80\x02c__main__\nL\nq\x00)\x81q\x01(K\x01K\x02e.";
        let (arena, root) = run(bytes).unwrap();
        let Node::Call(call) = *arena.get(root) else {
            panic!("{:?}", arena.get(root))
        };
        let items: Vec<_> = arena
            .call(call)
            .list_items
            .iter()
            .map(|&i| arena.get(i))
            .collect();
        assert_eq!(items, [&Node::Int(1), &Node::Int(2)]);
    }

    #[test]
    fn pop_mark_discards_everything_above_the_mark() {
        // 7, MARK, 1, 2, POP_MARK, STOP: 7 is what remains.
        let (arena, root) = run(b"\x80\x02K\x07(K\x01K\x021.").unwrap();
        assert_eq!(arena.get(root), &Node::Int(7));
    }

    #[test]
    fn out_of_band_buffers_are_refused_by_name() {
        let err = run(b"\x80\x05\x97.").unwrap_err();
        assert_eq!(
            err.to_string(),
            "byte 0x2, opcode NEXT_BUFFER: out-of-band buffers (NEXT_BUFFER) are not supported"
        );
    }

    #[test]
    fn readonly_buffer_leaves_bytes_as_they_are() {
        // Python's load_readonly_buffer: bytes are already read-only, so the value is unchanged.
        let (arena, root) = run(b"\x80\x05C\x01a\x98.").unwrap();
        assert_eq!(arena.get(root), &Node::Bytes(b"a".to_vec()));
        let err = run(b"\x80\x05\x98.").unwrap_err();
        assert_eq!(
            err.to_string(),
            "byte 0x2, opcode READONLY_BUFFER: unpickling stack underflow"
        );
    }

    #[test]
    fn extension_registry_opcodes_are_refused_by_name() {
        for (bytes, name) in [
            (&b"\x80\x02\x82\x01."[..], "EXT1"),
            (b"\x80\x02\x83\x01\x00.", "EXT2"),
            (b"\x80\x02\x84\x01\x00\x00\x00.", "EXT4"),
        ] {
            assert_eq!(
                run(bytes).unwrap_err().to_string(),
                format!(
                    "byte 0x2, opcode {name}: the copyreg extension registry (EXT1/EXT2/EXT4) \
                     is not supported"
                )
            );
        }
    }

    /// The one call node a pickle made: its callable's name, kind, args and kwargs.
    fn only_call(bytes: &[u8]) -> (String, CallKind, Vec<Node>, Option<Node>) {
        let (arena, root) = run(bytes).unwrap();
        let Node::Call(index) = *arena.get(root) else {
            panic!("{:?}", arena.get(root))
        };
        let call = arena.call(index);
        let (module, name) = arena.global(call.callable).unwrap();
        let args = arena.tuple(call.args).unwrap();
        (
            format!("{module}.{name}"),
            call.kind,
            args.iter().map(|&i| arena.get(i).clone()).collect(),
            call.kwargs.map(|k| arena.get(k).clone()),
        )
    }

    #[test]
    fn object_constructions_of_every_protocol_are_recorded() {
        // NEWOBJ_EX (protocol 4): cls, args, kwargs.
        let (class, kind, args, kwargs) = only_call(b"\x80\x04c__main__\nC\nK\x01\x85}\x92.");
        assert_eq!((class.as_str(), kind), ("__main__.C", CallKind::NewObj));
        assert_eq!(
            (args, kwargs),
            (vec![Node::Int(1)], Some(Node::Dict(DictItems::new())))
        );
        // OBJ (protocol 1): MARK, cls, args…
        let (class, kind, args, kwargs) = only_call(b"(c__main__\nC\nK\x01K\x02o.");
        assert_eq!((class.as_str(), kind), ("__main__.C", CallKind::Inst));
        assert_eq!((args, kwargs), (vec![Node::Int(1), Node::Int(2)], None));
        // INST (protocol 0): MARK, args…, then the class on the opcode's lines.
        let (class, kind, args, _) = only_call(b"(I1\ni__main__\nC\n.");
        assert_eq!((class.as_str(), kind), ("__main__.C", CallKind::Inst));
        assert_eq!(args, vec![Node::Int(1)]);
        for (bytes, message) in [
            (
                &b"\x80\x04c__main__\nC\n)K\x01\x92."[..],
                "byte 0x11, opcode NEWOBJ_EX: NEWOBJ_EX needs a tuple and a dict",
            ),
            (b"(o.", "byte 0x1, opcode OBJ: OBJ without a class"),
        ] {
            assert_eq!(run(bytes).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn short_tuples_take_exactly_their_items_above_the_mark() {
        let (arena, root) = run(b"\x80\x02K\x01K\x02\x86.").unwrap();
        let items: Vec<_> = arena
            .tuple(root)
            .unwrap()
            .iter()
            .map(|&i| arena.get(i))
            .collect();
        assert_eq!(items, [&Node::Int(1), &Node::Int(2)]);
        for bytes in [&b"\x80\x02K\x01\x86."[..], b"\x80\x02K\x01(K\x02\x86."] {
            let err = run(bytes).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "byte 0x{:X}, opcode TUPLE2: unpickling stack underflow",
                    bytes.len() - 2
                )
            );
        }
    }

    #[test]
    fn long4_counts_its_bytes_and_refuses_a_negative_count() {
        // LONG4 with 0 bytes is 0 (Python's decode_long(b"")); with 2 bytes, little-endian.
        let (arena, root) = run(b"\x80\x02\x8b\x00\x00\x00\x00.").unwrap();
        assert_eq!(arena.get(root), &Node::Int(0));
        let (arena, root) = run(b"\x80\x02\x8b\x02\x00\x00\x00\x00\x01.").unwrap();
        assert_eq!(arena.get(root), &Node::Int(256));
        let err = run(b"\x80\x02\x8b\xff\xff\xff\xff.").unwrap_err();
        assert_eq!(
            err.to_string(),
            "byte 0x2, opcode LONG4: LONG4 with a negative byte count"
        );
    }

    #[test]
    fn long1_ints_are_sign_extended_and_past_64_bits_kept_whole() {
        // pickle.dumps(v, protocol=2) in CPython 3.11: LONG1 with the bytes of encode_long(v).
        for (bytes, want) in [
            (
                &b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\x01."[..],
                1i64 << 40,
            ),
            (b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\xff.", -(1i64 << 40)),
            (b"\x80\x02\x8a\x06\x00\x00\x00\x00\xff\x00.", 255 << 32),
            (b"\x80\x02\x8a\x05\x00\x00\x00\x80\x00.", 1 << 31),
            (b"\x80\x02\x8a\x05\xff\xff\xff\x7f\xff.", -(1 << 31) - 1),
            (
                b"\x80\x02\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f.",
                i64::MAX,
            ),
            (
                b"\x80\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.",
                i64::MIN,
            ),
            (b"\x80\x02\x8a\x00.", 0),
        ] {
            let (arena, root) = run(bytes).unwrap();
            assert_eq!(arena.get(root), &Node::Int(want), "{want}");
        }
        for (bytes, payload) in [
            // 2**63 and -2**63 - 1: nine bytes.
            (
                &b"\x80\x02\x8a\t\x00\x00\x00\x00\x00\x00\x00\x80\x00."[..],
                &b"\x00\x00\x00\x00\x00\x00\x00\x80\x00"[..],
            ),
            (
                b"\x80\x02\x8a\t\xff\xff\xff\xff\xff\xff\xff\x7f\xff.",
                b"\xff\xff\xff\xff\xff\xff\xff\x7f\xff",
            ),
        ] {
            let (arena, root) = run(bytes).unwrap();
            assert_eq!(arena.get(root), &Node::BigInt(payload.to_vec()));
        }
    }

    #[test]
    fn long1_with_spare_sign_bytes_is_still_an_int() {
        // Not what Python writes (its encode_long is minimal), but the same values to it.
        let mut minus_2_63 = vec![0x80, 0x02, 0x8a, 17, 0, 0, 0, 0, 0, 0, 0, 0x80];
        minus_2_63.extend([0xff; 9]);
        minus_2_63.push(b'.');
        for (bytes, want) in [
            (
                &b"\x80\x02\x8a\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff."[..],
                Node::Int(-1),
            ),
            (
                b"\x80\x02\x8a\x0a\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
                Node::Int(1),
            ),
            (
                b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\x00.",
                Node::Int(i64::MAX),
            ),
            (&minus_2_63, Node::Int(i64::MIN)),
            // 2**63 and -2**63 - 1 need their ninth byte.
            (
                b"\x80\x02\x8a\x0a\x00\x00\x00\x00\x00\x00\x00\x80\x00\x00.",
                Node::BigInt(b"\x00\x00\x00\x00\x00\x00\x00\x80\x00".to_vec()),
            ),
            (
                b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\xff.",
                Node::BigInt(b"\xff\xff\xff\xff\xff\xff\xff\x7f\xff".to_vec()),
            ),
        ] {
            let (arena, root) = run(bytes).unwrap();
            assert_eq!(arena.get(root), &want, "{}", bytes.escape_ascii());
        }
    }

    #[test]
    fn protocol0_ints_of_any_size() {
        // pickle.dumps(2**70, protocol=0), and Python 2's INT/LONG lines.
        let (arena, root) = run(b"L1180591620717411303424L\n.").unwrap();
        let Node::BigInt(le) = arena.get(root) else {
            panic!("{:?}", arena.get(root))
        };
        assert_eq!(bigint_to_decimal(le), "1180591620717411303424");
        let (arena, root) = run(b"L-12345678901234567890123L\n.").unwrap();
        let Node::BigInt(le) = arena.get(root) else {
            panic!("{:?}", arena.get(root))
        };
        assert_eq!(bigint_to_decimal(le), "-12345678901234567890123");
        for (bytes, want) in [
            (&b"I-5\n."[..], -5),
            (b"L7L\n.", 7),
            (b"I9223372036854775807\n.", i64::MAX),
        ] {
            let (arena, root) = run(bytes).unwrap();
            assert_eq!(arena.get(root), &Node::Int(want));
        }
        for (bytes, message) in [
            (
                &b"I1.5\n."[..],
                r#"byte 0x0, opcode INT: invalid INT literal "1.5""#,
            ),
            (
                b"Lx\n.",
                r#"byte 0x0, opcode LONG: invalid LONG literal "x""#,
            ),
            (
                b"Fnot\n.",
                r#"byte 0x0, opcode FLOAT: invalid FLOAT literal "not""#,
            ),
        ] {
            assert_eq!(run(bytes).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn protocol0_floats_read_as_python_float_does() {
        for (bytes, want) in [
            (&b"F2.5\n."[..], 2.5),
            (b"F-0.0\n.", -0.0),
            (b"F1e+16\n.", 1e16),
            (b"Finf\n.", f64::INFINITY),
            (b"F-inf\n.", f64::NEG_INFINITY),
        ] {
            let (arena, root) = run(bytes).unwrap();
            let Node::Float(x) = *arena.get(root) else {
                panic!("{:?}", arena.get(root))
            };
            assert_eq!((x, x.is_sign_negative()), (want, want.is_sign_negative()));
        }
        let (arena, root) = run(b"Fnan\n.").unwrap();
        assert!(matches!(*arena.get(root), Node::Float(x) if x.is_nan()));
    }

    #[test]
    fn dict_takes_the_pairs_above_its_mark() {
        // 9, MARK, 1, 2, 3, 4, DICT: {1: 2, 3: 4}, with 9 left below it.
        let (arena, root) = run(b"K\x09(K\x01K\x02K\x03K\x04d.").unwrap();
        let Node::Dict(items) = arena.get(root) else {
            panic!("{:?}", arena.get(root))
        };
        let ints: Vec<_> = items
            .iter()
            .map(|&(k, v)| (arena.int(k), arena.int(v)))
            .collect();
        assert_eq!(ints, [(Some(1), Some(2)), (Some(3), Some(4))]);
        let err = run(b"(K\x01K\x02K\x03d.").unwrap_err();
        assert_eq!(
            err.to_string(),
            "byte 0x7, opcode DICT: odd number of items for DICT"
        );
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        // 100 000 nested lists: ']' * n then 'a' * (n-1) then '.'
        let n = 100_000;
        let mut bytes = vec![0x80, 2];
        bytes.extend(std::iter::repeat_n(b']', n));
        bytes.extend(std::iter::repeat_n(b'a', n - 1));
        bytes.push(b'.');
        let (arena, _) = run(&bytes).unwrap();
        assert_eq!(arena.len(), n);
    }
}
