//! A general pickle reader (protocols 0–5) that knows nothing of torch.
//!
//! [`load_pickle`] runs the pickle machine (`machine.rs`) over a byte slice and returns the id of the
//! result in an [`Arena`]. Two hooks give meaning to what the machine cannot decide alone:
//!
//! | hook | called for | may |
//! |---|---|---|
//! | [`Hooks::find_class`] | `GLOBAL`, `STACK_GLOBAL`, `INST` | rename (`__builtin__` → `builtins`) or refuse |
//! | [`Hooks::persistent_load`] | `BINPERSID`, `PERSID` | return any node (torch: a storage handle) |
//!
//! Nothing is imported or executed: calls are recorded as [`Node::Call`] nodes.

pub mod encoding;
pub(crate) mod machine;
pub mod value;

use std::fmt;

pub use encoding::{decode_py2_string, Decoded, StringEncoding};
pub use value::{Arena, Call, CallKind, DictItems, Node, NodeId};

/// What the machine asks of the layer above it.
pub trait Hooks {
    /// Resolves a global name. Returns the `(module, name)` to record (the ones given, or static
    /// texts), or a message refusing it.
    fn find_class<'s>(
        &mut self,
        module: &'s str,
        name: &'s str,
    ) -> Result<(&'s str, &'s str), String>;

    /// Turns a persistent id (the node `pid`) into the node that stands for it.
    fn persistent_load(&mut self, arena: &mut Arena, pid: NodeId) -> Result<NodeId, String>;
}

/// Hooks that accept every global as it is and refuse persistent ids.
#[derive(Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn find_class<'s>(
        &mut self,
        module: &'s str,
        name: &'s str,
    ) -> Result<(&'s str, &'s str), String> {
        Ok((module, name))
    }
    fn persistent_load(&mut self, _: &mut Arena, _: NodeId) -> Result<NodeId, String> {
        Err("persistent ids are not supported here".into())
    }
}

/// Bounds the machine enforces; each guards memory against a hostile pickle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickleLimits {
    /// Most objects one pickle may create. Each opcode makes at most two, so the input size
    /// already bounds this; the cap keeps ids in `u32` and memory predictable.
    pub max_nodes: usize,
    /// Most distinct memo slots (`BINPUT` with scattered indices costs a map entry each).
    pub max_memo: usize,
    /// Most values on the stack at once.
    pub max_stack: usize,
}

impl Default for PickleLimits {
    fn default() -> Self {
        PickleLimits {
            max_nodes: 50_000_000,
            max_memo: 10_000_000,
            max_stack: 10_000_000,
        }
    }
}

/// A pickle that could not be read: where, during which opcode, and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickleError {
    /// Byte offset of the opcode within the pickle.
    pub offset: u64,
    /// The opcode being executed, if any.
    pub opcode: Option<u8>,
    /// What went wrong.
    pub message: String,
    /// When a [`PickleLimits`] bound stopped the machine: which, as a `Limits` field.
    pub limit: Option<LimitHit>,
}

/// A bound of [`PickleLimits`] that was exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitHit {
    /// The `Limits` field that sets it (`max_pickle_nodes`, `max_memo_entries`).
    pub limit: &'static str,
    /// The value met.
    pub value: u64,
    /// The bound.
    pub max: u64,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte 0x{:X}", self.offset)?;
        if let Some(op) = self.opcode {
            match opcode_name(op) {
                Some(name) => write!(f, ", opcode {name}")?,
                None => write!(f, ", opcode 0x{op:02X}")?,
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PickleError {}

/// Runs one pickle from the start of `input`; returns the result and the offset after `STOP`.
pub fn load_pickle<H: Hooks>(
    input: &[u8],
    arena: &mut Arena,
    hooks: &mut H,
    limits: PickleLimits,
    encoding: StringEncoding,
) -> Result<(NodeId, usize), PickleError> {
    // Torch's pickles make a node for every 5 to 6 bytes or so; room for them up front saves
    // copying the arena as it grows (capped: a pickle of a few big strings needs few nodes).
    arena.reserve(
        (input.len() / 6)
            .min(limits.max_nodes)
            .min(MAX_NODES_RESERVED),
    );
    let mut machine = machine::Machine::new(input, arena, hooks, limits, encoding);
    let root = machine.run()?;
    Ok((root, machine.position()))
}

/// The most nodes [`load_pickle`] makes room for before it runs.
const MAX_NODES_RESERVED: usize = 1 << 20;

/// Whether running `input` shares objects in ways plain-value readers get wrong: a memo index
/// rebound (a PUT to an index already set) or a DUP (one object in two places). Both are legal
/// and Python shares; serde-pickle resolves memo references lazily and copies on DUP, so the
/// differential tests need to know (not a stable API).
#[doc(hidden)]
pub fn shares_beyond_memo(input: &[u8], limits: PickleLimits) -> bool {
    let mut arena = Arena::default();
    let mut hooks = NoHooks;
    let mut machine =
        machine::Machine::new(input, &mut arena, &mut hooks, limits, StringEncoding::Utf8);
    let _ = machine.run();
    machine.memo_rebinds() > 0 || machine.dups() > 0
}

/// The name of a pickle opcode, as Python's `pickletools` spells it.
pub fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Result<(Arena, NodeId), PickleError> {
        let mut arena = Arena::new();
        let (root, _) = load_pickle(
            input,
            &mut arena,
            &mut NoHooks,
            PickleLimits::default(),
            StringEncoding::Utf8,
        )?;
        Ok((arena, root))
    }

    #[test]
    fn no_hooks_keeps_globals_as_named_and_refuses_persistent_ids() {
        let (arena, root) = run(b"\x80\x02cmod.sub\nName\n.").unwrap();
        assert_eq!(arena.global(root), Some(("mod.sub", "Name")));
        let e = run(b"\x80\x02K\x01Q.").unwrap_err();
        assert_eq!(e.message, "persistent ids are not supported here");
    }

    #[test]
    fn sharing_beyond_the_memo_is_told_apart() {
        let limits = PickleLimits::default();
        // [[]] built plainly, with a memo reference, with a DUP, and with a rebound index.
        assert!(!shares_beyond_memo(b"\x80\x02]q\x00]q\x01a.", limits));
        assert!(!shares_beyond_memo(b"\x80\x02]q\x00h\x00a.", limits));
        assert!(shares_beyond_memo(b"\x80\x02]2a.", limits));
        assert!(shares_beyond_memo(b"\x80\x02]q\x00]q\x00a.", limits));
    }

    /// Every opcode of Python 3.11's `pickletools.opcodes`, by code.
    const PICKLETOOLS_OPCODES: [(u8, &str); 68] = [
        (0x28, "MARK"),
        (0x29, "EMPTY_TUPLE"),
        (0x2e, "STOP"),
        (0x30, "POP"),
        (0x31, "POP_MARK"),
        (0x32, "DUP"),
        (0x42, "BINBYTES"),
        (0x43, "SHORT_BINBYTES"),
        (0x46, "FLOAT"),
        (0x47, "BINFLOAT"),
        (0x49, "INT"),
        (0x4a, "BININT"),
        (0x4b, "BININT1"),
        (0x4c, "LONG"),
        (0x4d, "BININT2"),
        (0x4e, "NONE"),
        (0x50, "PERSID"),
        (0x51, "BINPERSID"),
        (0x52, "REDUCE"),
        (0x53, "STRING"),
        (0x54, "BINSTRING"),
        (0x55, "SHORT_BINSTRING"),
        (0x56, "UNICODE"),
        (0x58, "BINUNICODE"),
        (0x5d, "EMPTY_LIST"),
        (0x61, "APPEND"),
        (0x62, "BUILD"),
        (0x63, "GLOBAL"),
        (0x64, "DICT"),
        (0x65, "APPENDS"),
        (0x67, "GET"),
        (0x68, "BINGET"),
        (0x69, "INST"),
        (0x6a, "LONG_BINGET"),
        (0x6c, "LIST"),
        (0x6f, "OBJ"),
        (0x70, "PUT"),
        (0x71, "BINPUT"),
        (0x72, "LONG_BINPUT"),
        (0x73, "SETITEM"),
        (0x74, "TUPLE"),
        (0x75, "SETITEMS"),
        (0x7d, "EMPTY_DICT"),
        (0x80, "PROTO"),
        (0x81, "NEWOBJ"),
        (0x82, "EXT1"),
        (0x83, "EXT2"),
        (0x84, "EXT4"),
        (0x85, "TUPLE1"),
        (0x86, "TUPLE2"),
        (0x87, "TUPLE3"),
        (0x88, "NEWTRUE"),
        (0x89, "NEWFALSE"),
        (0x8a, "LONG1"),
        (0x8b, "LONG4"),
        (0x8c, "SHORT_BINUNICODE"),
        (0x8d, "BINUNICODE8"),
        (0x8e, "BINBYTES8"),
        (0x8f, "EMPTY_SET"),
        (0x90, "ADDITEMS"),
        (0x91, "FROZENSET"),
        (0x92, "NEWOBJ_EX"),
        (0x93, "STACK_GLOBAL"),
        (0x94, "MEMOIZE"),
        (0x95, "FRAME"),
        (0x96, "BYTEARRAY8"),
        (0x97, "NEXT_BUFFER"),
        (0x98, "READONLY_BUFFER"),
    ];

    #[test]
    fn opcode_names_are_pickletools_names() {
        for (code, name) in PICKLETOOLS_OPCODES {
            assert_eq!(opcode_name(code), Some(name), "0x{code:02x}");
        }
        for code in 0..=255u8 {
            if !PICKLETOOLS_OPCODES.iter().any(|&(c, _)| c == code) {
                assert_eq!(opcode_name(code), None, "0x{code:02x}");
            }
        }
    }
}
