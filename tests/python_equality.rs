//! Dict keys and set members compare as Python compares them: `1 == True == 1.0` and
//! `-0.0 == 0`, NaN never equal. A repeated dict key keeps the first key with the last value;
//! a repeated set member keeps the first (the pickle_oracle fuzzer found `{1, 75, True}`, which
//! Python reads as `{1, 75}`).

mod common;

use common::{Pickle, ZipBuilder};
use ptload::Value;

fn root_of(pickle: Vec<u8>) -> Value {
    let ckpt = ptload::load_bytes(ZipBuilder::checkpoint(&pickle, &[])).unwrap();
    ckpt.root.clone()
}

fn float(x: f64) -> Vec<u8> {
    let mut op = vec![b'G'];
    op.extend_from_slice(&x.to_be_bytes());
    op
}

#[test]
fn set_members_equal_in_python_are_one() {
    // {1, 75, True, 1.0, 0.5, 0.5, -0.0, 0, nan, nan}
    let p = Pickle::new()
        .op(b"\x8f(")
        .int(1)
        .int(75)
        .op(b"\x88")
        .op(&float(1.0))
        .op(&float(0.5))
        .op(&float(0.5))
        .op(&float(-0.0))
        .int(0)
        .op(&float(f64::NAN))
        .op(&float(f64::NAN))
        .op(b"\x90")
        .stop();
    let Value::Set(items) = root_of(p) else {
        panic!("not a set")
    };
    assert_eq!(items.len(), 6, "{items:?}");
    assert_eq!(items[0], Value::Int(1));
    assert_eq!(items[1], Value::Int(75));
    assert_eq!(items[2], Value::Float(0.5));
    assert!(matches!(items[3], Value::Float(x) if x == 0.0 && x.is_sign_negative()));
    assert!(
        matches!((&items[4], &items[5]), (Value::Float(a), Value::Float(b)) if a.is_nan() && b.is_nan())
    );
}

#[test]
fn dict_keys_equal_in_python_keep_the_first_key_and_the_last_value() {
    // {1: 'a', True: 'b', 1.0: 'c', 2.5: 'd', 2.5: 'e'}
    let p = Pickle::new()
        .op(b"}(")
        .int(1)
        .str("a")
        .op(b"\x88")
        .str("b")
        .op(&float(1.0))
        .str("c")
        .op(&float(2.5))
        .str("d")
        .op(&float(2.5))
        .str("e")
        .op(b"u")
        .stop();
    let Value::Dict(d) = root_of(p) else {
        panic!("not a dict")
    };
    assert_eq!(
        d.items,
        vec![
            (Value::Int(1), Value::Str("c".into())),
            (Value::Float(2.5), Value::Str("e".into())),
        ]
    );
}
