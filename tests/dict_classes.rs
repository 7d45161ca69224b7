//! Dict-like classes rebuilt from their pickled calls, as Python builds them:
//! `OrderedDict(pairs)` (Python 2 pickles its items as a list of `[key, value]` lists, and any
//! iterable of pairs is accepted), `defaultdict(factory)` (the factory is dropped) and the items
//! `SETITEMS` adds; arguments Python would refuse are refused by name.

mod common;

use common::{Pickle, ZipBuilder};
use ptload::Value;

fn root(pickle: Vec<u8>) -> Result<Value, String> {
    let bytes = ZipBuilder::checkpoint(&pickle, &[]);
    ptload::Loader::new()
        .weights_only(false)
        .load_bytes(bytes)
        .map(|ckpt| ckpt.root.clone())
        .map_err(|e| e.to_string())
}

/// `{'a': 1, 'b': 2}` as a dict of `class`.
fn a1_b2(class: &'static str) -> Value {
    Value::Dict(Box::new(ptload::Dict {
        class: class.into(),
        items: vec![
            (Value::Str("a".into()), Value::Int(1)),
            (Value::Str("b".into()), Value::Int(2)),
        ],
        attributes: Vec::new(),
    }))
}

#[test]
fn ordered_dicts_take_pairs_as_lists_or_tuples() {
    // collections.OrderedDict([['a', 1], ['b', 2]]) (Python 2's __reduce__), then the same
    // with tuples.
    for (open, close) in [(&b"]("[..], &b"e"[..]), (&b"("[..], &b"t"[..])] {
        let pair = |p: Pickle, k: &str, v: i64| p.op(open).str(k).int(v).op(close);
        let p = Pickle::new()
            .global("collections", "OrderedDict")
            .op(b"(]("); // args tuple, the list of pairs
        let p = pair(pair(p, "a", 1), "b", 2).op(b"e").op(b"tR").stop();
        assert_eq!(root(p).unwrap(), a1_b2("collections.OrderedDict"));
    }
}

#[test]
fn an_ordered_dict_pair_of_one_is_refused() {
    let p = Pickle::new()
        .global("collections", "OrderedDict")
        .op(b"(]((")
        .str("a")
        .op(b"te")
        .op(b"tR")
        .stop();
    let e = root(p).unwrap_err();
    assert!(
        e.contains(r#"unexpected arguments for collections.OrderedDict: ("a",)"#),
        "{e}"
    );
}

#[test]
fn a_defaultdict_drops_its_factory_and_keeps_its_items() {
    // collections.defaultdict(dict) with {'a': 1, 'b': 2} set on it (SETITEMS).
    let p = Pickle::new()
        .global("collections", "defaultdict")
        .op(b"(")
        .global("builtins", "dict")
        .op(b"tR")
        .op(b"(")
        .str("a")
        .int(1)
        .str("b")
        .int(2)
        .op(b"u")
        .stop();
    assert_eq!(root(p).unwrap(), a1_b2("collections.defaultdict"));
}

#[test]
fn other_dict_classes_refuse_a_factory_or_a_list() {
    // Counter(dict) and Counter([...]) are not what torch writes: refused, naming the class.
    let factory = Pickle::new()
        .global("collections", "Counter")
        .op(b"(")
        .global("builtins", "dict")
        .op(b"tR")
        .stop();
    let e = root(factory).unwrap_err();
    assert!(
        e.contains("unexpected arguments for collections.Counter"),
        "{e}"
    );
    let list = Pickle::new()
        .global("collections", "Counter")
        .op(b"(]((")
        .str("a")
        .int(1)
        .op(b"tetR")
        .stop();
    let e = root(list).unwrap_err();
    assert!(
        e.contains("unexpected arguments for collections.Counter"),
        "{e}"
    );
}
