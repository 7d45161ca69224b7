//! The checkpoint tree as JSON text: the `root` field of `ptload inspect --json`, written here
//! (without a JSON library) so that every surface prints the same bytes.
//!
//! The walk follows [`Value::children`], so a tensor's path is its path in
//! `Checkpoint::tensors`. Objects keep the file's key order. Floats are written as Python's
//! `repr` writes them ([`float_repr`]: `0.1`, `2.0`, `1e-05`), as Python's `json` does.
//!
//! | value | JSON |
//! |---|---|
//! | `None`, `bool`, `str` | `null`, `true`/`false`, a string |
//! | `int` | a number (`{"__int__": "decimal"}` beyond 64 bits) |
//! | `float` | a number (`{"__float__": "nan" \| "inf" \| "-inf"}` when not finite) |
//! | `list`, `tuple` | an array |
//! | `set`, `frozenset` | `{"__set__": [...]}`, `{"__frozenset__": [...]}` |
//! | `bytes`, `bytearray` | `{"__bytes__": "hex"}`, `{"__bytearray__": "hex"}` |
//! | `dict` with only `str` keys | an object, keys in file order (attributes such as `_metadata` left out, as in the JS API) |
//! | other `dict` | `{"__dict__": [[key, value], ...]}` |
//! | tensor | `{"__tensor__": "path"}`, its path in the tensor list; a tensor the list does not walk (an object's constructor arguments) is `{"__tensor__": null, "dtype", "shape"}` |
//! | storage saved alone | `{"__storage__": "key"}` |
//! | inert object | `{"__class__": "module.Name", "args": [...], "state": ...}` (+ `listItems`, `dictItems` when it acted as a list or dict), as in the JS API |
//! | `complex` | `{"__class__": "builtins.complex", "args": [re, im], "state": null}` |
//! | global (`torch.float32`, a class) | `{"__global__": "module.name"}` |

use std::fmt::Write as _;

use super::value::key_segment;
use super::{StorageId, Value};

/// Python's `repr` of a `float`: the shortest digits that round-trip, in exponent form below
/// 1e-4 and from 1e16 on (`2.5e-300`, `1e+300`), with `.0` on whole numbers; `inf`, `nan`.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}"); // shortest round-trip digits: "2.5e-300", "1e300"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = x.to_string();
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// `s` as a JSON string, appended to `out` (escapes as serde_json writes them).
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Most text (keys, dtype names, record names) needs no escape: copied whole.
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Plain records as JSON text, written field by field: what the npm package's wasm side hands
/// to JS for one `JSON.parse` (a storage's plan, a tensor's metadata) instead of setting each
/// property across the boundary (a call and a property-name string each: about a million for
/// 20,000 tensors). `JSON.parse` makes the properties in the order written. Numbers are
/// integers; beyond 2⁵³ JS rounds them as `JsValue::from_f64` of the same `u64` would.
#[cfg(any(test, all(feature = "wasm", target_arch = "wasm32")))]
#[derive(Default)]
pub(crate) struct JsonText {
    out: String,
    /// Whether the object or array just opened (or the field just named) needs no comma
    /// before what comes next.
    fresh: bool,
}

#[cfg(any(test, all(feature = "wasm", target_arch = "wasm32")))]
impl JsonText {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The text written so far.
    pub(crate) fn as_str(&self) -> &str {
        &self.out
    }

    /// Starts an object: the whole text, an array's next item, or a field's value after
    /// [`key`](Self::key).
    pub(crate) fn open_object(&mut self) {
        self.open('{');
    }

    pub(crate) fn close_object(&mut self) {
        self.close('}');
    }

    pub(crate) fn open_array(&mut self) {
        self.open('[');
    }

    pub(crate) fn close_array(&mut self) {
        self.close(']');
    }

    fn open(&mut self, bracket: char) {
        self.separate();
        self.out.push(bracket);
        self.fresh = true;
    }

    fn close(&mut self, bracket: char) {
        self.out.push(bracket);
        self.fresh = false;
    }

    /// A field's name; its value is written next.
    pub(crate) fn key(&mut self, name: &str) {
        self.separate();
        write_string(&mut self.out, name);
        self.out.push(':');
        self.fresh = true;
    }

    pub(crate) fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        self.separate();
        write_string(&mut self.out, value);
    }

    pub(crate) fn uint(&mut self, name: &str, value: u64) {
        self.key(name);
        self.number(value);
    }

    pub(crate) fn bool(&mut self, name: &str, value: bool) {
        self.key(name);
        self.separate();
        self.out.push_str(if value { "true" } else { "false" });
    }

    pub(crate) fn null(&mut self, name: &str) {
        self.key(name);
        self.separate();
        self.out.push_str("null");
    }

    /// A field whose value is an array of numbers.
    pub(crate) fn uints(&mut self, name: &str, values: &[u64]) {
        self.key(name);
        self.open_array();
        for &v in values {
            self.number(v);
        }
        self.close_array();
    }

    /// A comma, unless this is the first member (or a field's value).
    fn separate(&mut self) {
        if !self.fresh && !self.out.is_empty() {
            self.out.push(',');
        }
        self.fresh = false;
    }

    fn number(&mut self, value: u64) {
        self.separate();
        let _ = write!(self.out, "{value}");
    }
}

/// The tree as JSON text; `storage_key` names a storage saved on its own.
///
/// The walk keeps its own stack on the heap: a tree of any depth is written on any thread.
pub fn tree(root: &Value, storage_key: &dyn Fn(StorageId) -> Option<String>) -> String {
    let mut w = Writer {
        storage_key,
        out: String::new(),
    };
    let mut stack = vec![Task::Value(root, String::new(), true)];
    let mut next = Vec::new();
    while let Some(task) = stack.pop() {
        match task {
            Task::Raw(s) => w.raw(s),
            Task::Str(s) => w.string(s),
            Task::Value(value, path, listed) => {
                w.value(
                    value,
                    At {
                        path: &path,
                        listed,
                    },
                    &mut next,
                );
                stack.extend(next.drain(..).rev());
            }
        }
    }
    w.out
}

/// Where a value sits: its path, and whether `Checkpoint::tensors` walks it.
#[derive(Clone, Copy)]
struct At<'p> {
    path: &'p str,
    listed: bool,
}

impl At<'_> {
    fn child(&self, segment: &str) -> String {
        if self.path.is_empty() {
            segment.to_owned()
        } else {
            format!("{}.{segment}", self.path)
        }
    }
}

/// Output still to write, in order: text, a JSON string, or a value (with its path and
/// whether `Checkpoint::tensors` walks it).
enum Task<'v> {
    Raw(&'static str),
    Str(&'v str),
    Value(&'v Value, String, bool),
}

struct Writer<'k> {
    storage_key: &'k dyn Fn(StorageId) -> Option<String>,
    out: String,
}

impl Writer<'_> {
    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// A JSON string (escapes as serde_json writes them).
    fn string(&mut self, s: &str) {
        write_string(&mut self.out, s);
    }

    fn float(&mut self, x: f64) {
        if x.is_finite() {
            let repr = float_repr(x);
            self.raw(&repr);
        } else {
            let _ = write!(self.out, "{{\"__float__\":\"{}\"}}", float_repr(x));
        }
    }

    fn hex(&mut self, tag: &str, bytes: &[u8]) {
        let _ = write!(self.out, "{{\"{tag}\":\"");
        for b in bytes {
            let _ = write!(self.out, "{b:02x}");
        }
        self.raw("\"}");
    }
}

/// Tasks for a bare array of `items`, each at `at.child(i)`.
fn array<'v>(items: &'v [Value], at: At<'_>, tasks: &mut Vec<Task<'v>>) {
    tasks.push(Task::Raw("["));
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            tasks.push(Task::Raw(","));
        }
        tasks.push(Task::Value(v, at.child(&i.to_string()), at.listed));
    }
    tasks.push(Task::Raw("]"));
}

/// Tasks for a dict's items, their values at `at.child(key)`: an object when every key is a
/// `str`, else `{"__dict__": [[key, value], ...]}`.
fn dict_items<'v>(items: &'v [(Value, Value)], at: At<'_>, tasks: &mut Vec<Task<'v>>) {
    let str_keys = items.iter().all(|(k, _)| matches!(k, Value::Str(_)));
    tasks.push(Task::Raw(if str_keys { "{" } else { "{\"__dict__\":[" }));
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            tasks.push(Task::Raw(","));
        }
        match k {
            Value::Str(s) if str_keys => {
                tasks.push(Task::Str(s));
                tasks.push(Task::Raw(":"));
            }
            _ => {
                tasks.push(Task::Raw("["));
                tasks.push(Task::Value(k, String::new(), false));
                tasks.push(Task::Raw(","));
            }
        }
        tasks.push(Task::Value(v, at.child(&key_segment(k)), at.listed));
        if !str_keys {
            tasks.push(Task::Raw("]"));
        }
    }
    tasks.push(Task::Raw(if str_keys { "}" } else { "]}" }));
}

impl Writer<'_> {
    /// Writes a leaf now; for a container, pushes the tasks that write it onto `tasks`.
    fn value<'v>(&mut self, value: &'v Value, at: At<'_>, tasks: &mut Vec<Task<'v>>) {
        const UNLISTED: At<'static> = At {
            path: "",
            listed: false,
        };
        match value {
            Value::None => self.raw("null"),
            Value::Bool(b) => self.raw(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(self.out, "{i}");
            }
            Value::BigInt(s) => {
                self.raw("{\"__int__\":");
                self.string(s);
                self.raw("}");
            }
            Value::Float(x) => self.float(*x),
            Value::Complex(re, im) => {
                self.raw("{\"__class__\":\"builtins.complex\",\"args\":[");
                self.float(*re);
                self.raw(",");
                self.float(*im);
                self.raw("],\"state\":null}");
            }
            Value::Str(s) => self.string(s),
            Value::Bytes(b) => self.hex("__bytes__", b),
            Value::ByteArray(b) => self.hex("__bytearray__", b),
            Value::List(items) | Value::Tuple(items) => array(items, at, tasks),
            Value::Set(items) => {
                tasks.push(Task::Raw("{\"__set__\":"));
                array(items, at, tasks);
                tasks.push(Task::Raw("}"));
            }
            Value::FrozenSet(items) => {
                tasks.push(Task::Raw("{\"__frozenset__\":"));
                array(items, at, tasks);
                tasks.push(Task::Raw("}"));
            }
            Value::Dict(d) => dict_items(&d.items, at, tasks),
            Value::Tensor(_) if at.listed => {
                self.raw("{\"__tensor__\":");
                self.string(at.path);
                self.raw("}");
            }
            Value::Tensor(meta) => {
                let shape: Vec<String> = meta.shape.iter().map(u64::to_string).collect();
                let _ = write!(
                    self.out,
                    "{{\"__tensor__\":null,\"dtype\":\"{}\",\"shape\":[{}]}}",
                    meta.dtype,
                    shape.join(",")
                );
            }
            Value::Storage(id) => {
                self.raw("{\"__storage__\":");
                match (self.storage_key)(*id) {
                    Some(key) => self.string(&key),
                    None => self.raw("null"),
                }
                self.raw("}");
            }
            Value::Object(o) => {
                tasks.push(Task::Raw("{\"__class__\":"));
                tasks.push(Task::Str(&o.class));
                tasks.push(Task::Raw(",\"args\":"));
                array(&o.args, UNLISTED, tasks);
                tasks.push(Task::Raw(",\"state\":"));
                match &o.state {
                    None => tasks.push(Task::Raw("null")),
                    // The state dict's items are the object's attributes: paths `obj.name`.
                    Some(Value::Dict(d)) => dict_items(&d.items, at, tasks),
                    // (dict, slots), as Python's default __reduce_ex__ writes it.
                    Some(Value::Tuple(parts)) => {
                        tasks.push(Task::Raw("["));
                        for (i, part) in parts.iter().enumerate() {
                            if i > 0 {
                                tasks.push(Task::Raw(","));
                            }
                            match part {
                                Value::Dict(d) => dict_items(&d.items, at, tasks),
                                other => tasks.push(Task::Value(other, String::new(), false)),
                            }
                        }
                        tasks.push(Task::Raw("]"));
                    }
                    Some(other) => tasks.push(Task::Value(other, String::new(), false)),
                }
                if !o.list_items.is_empty() {
                    tasks.push(Task::Raw(",\"listItems\":"));
                    array(&o.list_items, at, tasks);
                }
                if !o.dict_items.is_empty() {
                    tasks.push(Task::Raw(",\"dictItems\":"));
                    dict_items(&o.dict_items, at, tasks);
                }
                tasks.push(Task::Raw("}"));
            }
            Value::Global(name) => {
                self.raw("{\"__global__\":");
                self.string(name);
                self.raw("}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::{Dict, Dtype, Object, TensorMeta};

    /// Each expected text is Python 3.11's `repr`.
    #[test]
    fn floats_as_python_writes_them() {
        for (x, want) in [
            (0.1, "0.1"),
            (76.5, "76.5"),
            (2.0, "2.0"),
            (-0.0, "-0.0"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (-2.5e-300, "-2.5e-300"),
            (1e300, "1e+300"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    fn dict(class: &str, items: Vec<(Value, Value)>) -> Value {
        Value::Dict(Box::new(Dict {
            class: class.to_owned().into(),
            items,
            attributes: vec![("_metadata".into(), Value::None)],
        }))
    }

    fn tensor() -> Value {
        Value::Tensor(Box::new(TensorMeta::view(
            Some(0),
            Dtype::Float32,
            vec![2],
            vec![1],
            0,
        )))
    }

    #[test]
    fn every_kind_of_value() {
        let s = |x: &str| Value::Str(x.into());
        let root = dict(
            "collections.OrderedDict",
            vec![
                (s("z\"q\n"), Value::Float(f64::NEG_INFINITY)),
                (s("nan"), Value::Float(f64::NAN)),
                (s("big"), Value::BigInt("-1180591620717411303424".into())),
                (s("b"), Value::Bytes(vec![0, 255])),
                (s("set"), Value::Set(vec![Value::Int(1)])),
                (s("c"), Value::Complex(1.5, -2.0)),
                (s("ints"), dict("dict", vec![(Value::Int(3), tensor())])),
                (
                    s("obj"),
                    Value::Object(Box::new(Object {
                        class: "argparse.Namespace".into(),
                        args: vec![tensor()],
                        state: Some(dict("dict", vec![(s("w"), tensor())])),
                        list_items: vec![],
                        dict_items: vec![],
                    })),
                ),
                (s("g"), Value::Global("torch.float32".into())),
                (s("st"), Value::Storage(0)),
            ],
        );
        let text = tree(&root, &|id| Some(format!("key{id}")));
        assert_eq!(
            text,
            r#"{"z\"q\n":{"__float__":"-inf"},"nan":{"__float__":"nan"},"big":{"__int__":"-1180591620717411303424"},"b":{"__bytes__":"00ff"},"set":{"__set__":[1]},"c":{"__class__":"builtins.complex","args":[1.5,-2.0],"state":null},"ints":{"__dict__":[[3,{"__tensor__":"ints.3"}]]},"obj":{"__class__":"argparse.Namespace","args":[{"__tensor__":null,"dtype":"float32","shape":[2]}],"state":{"w":{"__tensor__":"obj.w"}}},"g":{"__global__":"torch.float32"},"st":{"__storage__":"key0"}}"#
        );
    }

    #[test]
    fn records_are_written_as_json_text_serde_reads_back_in_order() {
        let mut j = JsonText::new();
        j.open_array();
        for (key, size) in [("0", 16u64), ("a\"b\\c\n\u{1}é", u64::MAX)] {
            j.open_object();
            j.str("key", key);
            j.uint("size", size);
            j.uints("shape", &[2, 3]);
            j.uints("none", &[]);
            j.bool("swap", size == 16);
            j.null("record");
            j.key("inner");
            j.open_object();
            j.bool("deflated", false);
            j.close_object();
            j.close_object();
        }
        j.close_array();
        let parsed: serde_json::Value = serde_json::from_str(j.as_str()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([
                {"key": "0", "size": 16, "shape": [2, 3], "none": [], "swap": true,
                 "record": null, "inner": {"deflated": false}},
                {"key": "a\"b\\c\n\u{1}é", "size": u64::MAX, "shape": [2, 3], "none": [],
                 "swap": false, "record": null, "inner": {"deflated": false}}
            ])
        );
        // JSON.parse makes properties in text order: the fields are written in call order.
        let text = j.as_str();
        let at: Vec<usize> = ["key", "size", "shape", "none", "swap", "record", "inner"]
            .iter()
            .map(|k| text.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every: String = (0u32..0x80).filter_map(char::from_u32).collect();
        // Each character that needs an escape alone too (the unescaped text is copied whole).
        for s in [
            every.as_str(),
            "é\u{2028}\u{ffff}😀",
            "",
            "a\"b",
            "a\\b",
            "a\u{1f}b",
            "a\nb",
        ] {
            let text = tree(&Value::Str(s.into()), &|_| None);
            assert_eq!(text, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn mixed_keys_and_slot_states_are_valid_json() {
        let s = |x: &str| Value::Str(x.into());
        // A dict with a str and an int key: every key as a pair's first item.
        let mixed = dict(
            "dict",
            vec![(s("a"), Value::Int(1)), (Value::Int(2), s("b"))],
        );
        assert_eq!(tree(&mixed, &|_| None), r#"{"__dict__":[["a",1],[2,"b"]]}"#);
        // An object whose state is (dict, slots), and one whose state is (None, dict, dict).
        let object = |state: Value| {
            Value::Object(Box::new(Object {
                class: "m.C".into(),
                args: vec![],
                state: Some(state),
                list_items: vec![],
                dict_items: vec![],
            }))
        };
        let slots = object(Value::Tuple(vec![
            dict("dict", vec![(s("x"), Value::Int(1))]),
            dict("dict", vec![(s("y"), Value::Int(2))]),
        ]));
        assert_eq!(
            tree(&slots, &|_| None),
            r#"{"__class__":"m.C","args":[],"state":[{"x":1},{"y":2}]}"#
        );
        let three = object(Value::Tuple(vec![
            Value::None,
            dict("dict", vec![(s("x"), Value::Int(1))]),
            Value::Int(3),
        ]));
        let text = tree(&three, &|_| None);
        assert_eq!(
            text,
            r#"{"__class__":"m.C","args":[],"state":[null,{"x":1},3]}"#
        );
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }

    #[test]
    fn a_deep_tree_is_written_without_recursion() {
        let mut v = tensor();
        for _ in 0..100_000 {
            v = Value::List(vec![v]);
        }
        let text = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let text = tree(&v, &|_| None);
                v.dismantle();
                text
            })
            .unwrap()
            .join()
            .unwrap();
        let path = vec!["0"; 100_000].join(".");
        let want = format!(
            "{}{{\"__tensor__\":\"{path}\"}}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(text, want);
    }
}
