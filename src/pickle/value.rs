//! The objects a pickle builds, kept in an arena so that the memo shares them by reference.
//!
//! Every value the machine creates is a [`Node`] in an [`Arena`], named by a [`NodeId`]. The memo,
//! the stack and containers hold ids, so a value stored once and fetched a million times (BINGET)
//! is still one node, and a container mutated after it was memoized (EMPTY_DICT, BINPUT, SETITEMS)
//! is seen mutated through every reference, exactly as in Python. Nothing is ever deep-cloned.
//!
//! The arena knows nothing of torch: calls (`REDUCE`, `NEWOBJ`, `OBJ`, `INST`) and `BUILD`s are
//! recorded, never performed; later layers decide what they mean.

/// Index of a node in its [`Arena`].
pub type NodeId = u32;

/// Where a str's text or a tuple's items lie in their [`Arena`]'s pools: texts and tuples never
/// change once made, so they share two buffers instead of an allocation each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: usize,
    len: usize,
}

impl Span {
    /// Number of bytes (a str) or items (a tuple).
    pub fn len(self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

/// How a [`Call`] node was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// `REDUCE`: `callable(*args)`.
    Reduce,
    /// `NEWOBJ` / `NEWOBJ_EX`: `cls.__new__(cls, *args, **kwargs)`.
    NewObj,
    /// `OBJ` / `INST` (protocols 0–1): `cls(*args)`.
    Inst,
}

/// A call recorded by the machine, with whatever later opcodes did to its result.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The callable or class (usually a [`Node::Global`]).
    pub callable: NodeId,
    /// The positional arguments (a [`Node::Tuple`]).
    pub args: NodeId,
    /// Keyword arguments for `NEWOBJ_EX` (a [`Node::Dict`]).
    pub kwargs: Option<NodeId>,
    /// Which opcode made it.
    pub kind: CallKind,
    /// The states passed to `BUILD`, in order (usually zero or one).
    pub state: Vec<NodeId>,
    /// Items added by `APPEND`/`APPENDS` (the object acts as a list).
    pub list_items: Vec<NodeId>,
    /// Items added by `SETITEM`/`SETITEMS` (the object acts as a dict).
    pub dict_items: Vec<(NodeId, NodeId)>,
}

/// A dict node's `(key, value)` pairs: two inline (a module's `{'version': 1}` in a
/// `state_dict`'s `_metadata` costs no allocation of its own), more on the heap.
pub type DictItems = smallvec::SmallVec<[(NodeId, NodeId); 2]>;

/// One pickled value.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A larger int, as little-endian two's-complement bytes (LONG1/LONG4 payload).
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A str (and py2 strings decoded as text): its text is [`Arena::text`] of the span.
    Str(Span),
    /// A bytes object (and py2 strings kept as bytes).
    Bytes(Vec<u8>),
    /// A bytearray (protocol 5 `BYTEARRAY8`).
    ByteArray(Vec<u8>),
    /// A list.
    List(Vec<NodeId>),
    /// A tuple: its items are [`Arena::items`] of the span.
    Tuple(Span),
    /// A dict, in insertion order; a repeated key replaces the earlier value in place.
    Dict(DictItems),
    /// A set (`EMPTY_SET` + `ADDITEMS`).
    Set(Vec<NodeId>),
    /// A frozenset.
    FrozenSet(Vec<NodeId>),
    /// A global name (`GLOBAL`, `STACK_GLOBAL`, `INST`), as the find_class hook returned it:
    /// [`Arena::global`] of the node.
    Global(u32),
    /// A call or object construction, recorded, never performed: [`Arena::call`] of the index.
    Call(u32),
    /// An opaque value made by the persistent_load hook (e.g. a storage handle).
    External(u64),
}

/// The node store: ids are indices into it. Texts, tuples' items and calls live in pools of
/// their own, so a node is small and most nodes cost no allocation of their own.
#[derive(Debug, Default)]
pub struct Arena {
    nodes: Vec<Node>,
    /// Every str's text, one after another ([`Node::Str`] spans).
    texts: String,
    /// Every tuple's items, one after another ([`Node::Tuple`] spans).
    items: Vec<NodeId>,
    /// Every call ([`Node::Call`] indices).
    calls: Vec<Call>,
    /// Every global's module and name, in `texts` ([`Node::Global`] indices).
    globals: Vec<(Span, Span)>,
}

impl Arena {
    /// An empty arena.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty arena whose pools have room for what a torch pickle of `input_len` bytes
    /// usually puts in them (a third of its bytes as text, an item per 8 bytes, a call per
    /// 48), capped, so that a small pickle's pools never grow while it runs. (The nodes are
    /// reserved by [`super::load_pickle`].)
    pub fn for_input(input_len: usize) -> Self {
        const MAX_RESERVED: usize = 1 << 16;
        Arena {
            nodes: Vec::new(),
            texts: String::with_capacity((input_len / 3).min(MAX_RESERVED * 8)),
            items: Vec::with_capacity((input_len / 8).min(MAX_RESERVED)),
            calls: Vec::with_capacity((input_len / 48).min(MAX_RESERVED / 8)),
            globals: Vec::with_capacity(16),
        }
    }

    /// Adds a node and returns its id.
    ///
    /// Ids are `u32`: the machine's input cap keeps the count far below that; a pickle that
    /// would exceed it is refused before this is called.
    pub fn push(&mut self, node: Node) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(node);
        id
    }

    /// The node with this id.
    ///
    /// Ids only come from [`Arena::push`] of this arena, so they are always in range.
    pub fn get(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// The node with this id, mutably.
    pub fn get_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    /// Makes room for `additional` more nodes.
    pub fn reserve(&mut self, additional: usize) {
        self.nodes.reserve(additional);
    }

    /// A str node holding a copy of `text` (not yet pushed).
    pub fn str_node(&mut self, text: &str) -> Node {
        Node::Str(self.add_text(text))
    }

    fn add_text(&mut self, text: &str) -> Span {
        let start = self.texts.len();
        self.texts.push_str(text);
        Span {
            start,
            len: text.len(),
        }
    }

    /// A tuple node holding a copy of `items` (not yet pushed).
    pub fn tuple_node(&mut self, items: &[NodeId]) -> Node {
        let start = self.items.len();
        self.items.extend_from_slice(items);
        Node::Tuple(Span {
            start,
            len: items.len(),
        })
    }

    /// A global node naming `module.name` (not yet pushed).
    pub fn global_node(&mut self, module: &str, name: &str) -> Node {
        let (module, name) = (self.add_text(module), self.add_text(name));
        // Globals are fewer than nodes, whose count the machine keeps within `u32`.
        let index = self.globals.len() as u32;
        self.globals.push((module, name));
        Node::Global(index)
    }

    /// A call node (not yet pushed).
    pub fn call_node(&mut self, call: Call) -> Node {
        // Calls are fewer than nodes, whose count the machine keeps within `u32`.
        let index = self.calls.len() as u32;
        self.calls.push(call);
        Node::Call(index)
    }

    /// The text of a str node's span.
    pub fn text(&self, span: Span) -> &str {
        &self.texts[span.range()]
    }

    /// The items of a tuple node's span.
    pub fn items(&self, span: Span) -> &[NodeId] {
        &self.items[span.range()]
    }

    /// The call of a call node's index.
    pub fn call(&self, index: u32) -> &Call {
        &self.calls[index as usize]
    }

    /// The call of a call node's index, mutably.
    pub fn call_mut(&mut self, index: u32) -> &mut Call {
        &mut self.calls[index as usize]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the arena is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node's items when it is a tuple, else `None`.
    pub fn tuple(&self, id: NodeId) -> Option<&[NodeId]> {
        match self.get(id) {
            Node::Tuple(span) => Some(self.items(*span)),
            _ => None,
        }
    }

    /// A node's items when it is a list or a tuple, else `None`.
    pub fn sequence(&self, id: NodeId) -> Option<&[NodeId]> {
        match self.get(id) {
            Node::List(items) => Some(items),
            Node::Tuple(span) => Some(self.items(*span)),
            _ => None,
        }
    }

    /// A node's text when it is a str, else `None`.
    pub fn str(&self, id: NodeId) -> Option<&str> {
        match self.get(id) {
            Node::Str(span) => Some(self.text(*span)),
            _ => None,
        }
    }

    /// A node's value when it is an int that fits in 64 bits (or a bool, as Python's int).
    pub fn int(&self, id: NodeId) -> Option<i64> {
        match self.get(id) {
            Node::Int(v) => Some(*v),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// `(module, name)` when the node is a global.
    pub fn global(&self, id: NodeId) -> Option<(&str, &str)> {
        match *self.get(id) {
            Node::Global(index) => {
                let (module, name) = self.globals[index as usize];
                Some((self.text(module), self.text(name)))
            }
            _ => None,
        }
    }

    /// Every global's `(module, name)`, by [`Node::Global`] index.
    pub fn globals(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.globals
            .iter()
            .map(|&(module, name)| (self.text(module), self.text(name)))
    }

    /// A short name for the node's kind, for error messages.
    pub fn kind_name(&self, id: NodeId) -> &'static str {
        match self.get(id) {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) | Node::BigInt(_) => "int",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::ByteArray(_) => "bytearray",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Dict(_) => "dict",
            Node::Set(_) => "set",
            Node::FrozenSet(_) => "frozenset",
            Node::Global(_) => "global",
            Node::Call(_) => "object",
            Node::External(_) => "persistent object",
        }
    }
}

/// Decimal text of a little-endian two's-complement integer of any length.
pub fn bigint_to_decimal(le: &[u8]) -> String {
    if le.is_empty() {
        return "0".to_string();
    }
    let negative = le[le.len() - 1] & 0x80 != 0;
    // Magnitude as little-endian bytes.
    let mut mag: Vec<u8> = if negative {
        let mut out = Vec::with_capacity(le.len());
        let mut carry = 1u16;
        for &b in le {
            let v = (!b) as u16 + carry;
            out.push(v as u8);
            carry = v >> 8;
        }
        out
    } else {
        le.to_vec()
    };
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut().rev() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Little-endian two's-complement bytes of a decimal integer text (`-?[0-9]+`), or `None`.
pub fn decimal_to_bigint(text: &str) -> Option<Vec<u8>> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut mag: Vec<u8> = vec![0];
    for d in digits.bytes() {
        let mut carry = (d - b'0') as u32;
        for b in mag.iter_mut() {
            let v = *b as u32 * 10 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            mag.push(carry as u8);
        }
    }
    mag.push(0); // room for the sign bit
    if negative {
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    Some(mag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_of_arenas_and_spans() {
        let mut arena = Arena::new();
        assert!(arena.is_empty());
        let node = arena.str_node("héllo");
        let Node::Str(span) = node else { panic!() };
        assert_eq!((span.len(), span.is_empty()), (6, false), "bytes of UTF-8");
        arena.push(node);
        let Node::Tuple(empty) = arena.tuple_node(&[]) else {
            panic!()
        };
        assert_eq!((empty.len(), empty.is_empty()), (0, true));
        let Node::Tuple(pair) = arena.tuple_node(&[0, 0]) else {
            panic!()
        };
        assert_eq!((pair.len(), pair.is_empty()), (2, false));
        assert_eq!((arena.len(), arena.is_empty()), (1, false));
    }

    #[test]
    fn accessors_take_what_python_would() {
        let mut arena = Arena::new();
        let one = arena.push(Node::Int(1));
        let yes = arena.push(Node::Bool(true));
        let no = arena.push(Node::Bool(false));
        let text = arena.str_node("s");
        let text = arena.push(text);
        let list = arena.push(Node::List(vec![one, yes]));
        let tuple = arena.tuple_node(&[yes, one]);
        let tuple = arena.push(tuple);
        // A bool is an int (`int(True) == 1`); a str is not.
        assert_eq!(
            [one, yes, no, text].map(|id| arena.int(id)),
            [Some(1), Some(1), Some(0), None]
        );
        // Lists and tuples are sequences (iterated alike); a str is not one here.
        assert_eq!(arena.sequence(list), Some(&[one, yes][..]));
        assert_eq!(arena.sequence(tuple), Some(&[yes, one][..]));
        assert_eq!(arena.sequence(text), None);
        assert_eq!(arena.tuple(tuple), Some(&[yes, one][..]));
        assert_eq!(arena.tuple(list), None);
        assert_eq!((arena.str(text), arena.str(one)), (Some("s"), None));
    }

    #[test]
    fn nodes_stay_small() {
        // The arena holds a node per value: a wide variant inline (two `String`s) would make
        // every node of every pickle wider.
        assert!(
            std::mem::size_of::<Node>() <= 32,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    /// A little-endian two's-complement integer that fits in 128 bits (any bytes past 16 are
    /// sign bytes), sign-extended.
    fn le_to_i128(le: &[u8]) -> i128 {
        let fill = if le.last().is_some_and(|&b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let (low, high) = le.split_at(le.len().min(16));
        assert!(high.iter().all(|&b| b == fill), "{le:?}");
        let mut bytes = [fill; 16];
        bytes[..low.len()].copy_from_slice(low);
        let value = i128::from_le_bytes(bytes);
        assert_eq!(
            value < 0,
            fill == 0xff,
            "{le:?}: the sign bit is past 128 bits"
        );
        value
    }

    #[test]
    fn decimal_and_bigint_agree_with_i128_arithmetic() {
        for text in [
            "0",
            "1",
            "-1",
            "127",
            "128",
            "-128",
            "-129",
            "255",
            "256",
            "-256",
            "65535",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "-18446744073709551616",
            "1000000000000000000000000000007",
            "-1000000000000000000000000000007",
            "170141183460469231731687303715884105727",
            "-170141183460469231731687303715884105727",
        ] {
            let want: i128 = text.parse().unwrap();
            let le = decimal_to_bigint(text).unwrap();
            assert_eq!(le_to_i128(&le), want, "{text}: {le:?}");
            assert_eq!(bigint_to_decimal(&le), text);
            assert_eq!(bigint_to_decimal(&want.to_le_bytes()), text);
        }
        assert_eq!(decimal_to_bigint("+42").map(|le| le_to_i128(&le)), Some(42));
        for bad in ["", "-", "+", "12a", "1 2", "--1", "0x10"] {
            assert_eq!(decimal_to_bigint(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bigints_longer_than_i128_read_as_python_wrote_them() {
        // pickle.encode_long(±2**200) in CPython 3.11: 26 bytes.
        let mut two_200 = vec![0u8; 26];
        two_200[25] = 0x01;
        assert_eq!(
            bigint_to_decimal(&two_200),
            "1606938044258990275541962092341162602522202993782792835301376"
        );
        two_200[25] = 0xff;
        assert_eq!(
            bigint_to_decimal(&two_200),
            "-1606938044258990275541962092341162602522202993782792835301376"
        );
    }

    #[test]
    fn bigint_decimal_round_trip() {
        for text in [
            "0",
            "1",
            "-1",
            "1180591620717411303424",
            "-1180591620717411303424",
            "255",
        ] {
            let bytes = decimal_to_bigint(text).unwrap();
            assert_eq!(bigint_to_decimal(&bytes), text);
        }
        // 2**70 as Python's LONG1 writes it: 9 bytes.
        assert_eq!(
            bigint_to_decimal(&[0, 0, 0, 0, 0, 0, 0, 0, 0x40]),
            "1180591620717411303424"
        );
        assert_eq!(bigint_to_decimal(&[0xff]), "-1");
        assert_eq!(decimal_to_bigint("12a"), None);
    }
}
