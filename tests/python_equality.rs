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

/// The items of the dict a pickle makes.
fn dict_items(pickle: Vec<u8>) -> Vec<(Value, Value)> {
    match root_of(pickle) {
        Value::Dict(d) => d.items,
        other => panic!("not a dict: {other}"),
    }
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
    assert_eq!(
        dict_items(p),
        vec![
            (Value::Int(1), Value::Str("c".into())),
            (Value::Float(2.5), Value::Str("e".into())),
        ]
    );
}

/// LONG1 of a two's-complement integer (as Python's `encode_long`, with a sign byte to spare).
fn long1(v: i128) -> Vec<u8> {
    let mut op = vec![0x8a, 17];
    op.extend_from_slice(&v.to_le_bytes());
    op.push(if v < 0 { 0xff } else { 0 });
    op
}

#[test]
fn ints_past_64_bits_equal_the_floats_of_their_value() {
    // In CPython 3.11, for i, k in enumerate(keys): d[k] = i, with keys
    // [2**63-1, 2.0**63, 2**63, -2**63, -2.0**63, 2**63-1024, 9223372036854774784.0, 2**64,
    //  2.0**64, -2**64, -2.0**64, 2**70+1, float(2**70), 10**30, 10**30] gives
    // {9223372036854775807: 0, 9.223372036854776e+18: 2, -9223372036854775808: 4,
    //  9223372036854774784: 6, 18446744073709551616: 8, -18446744073709551616: 10,
    //  1180591620717411303425: 11, 1.1805916207174113e+21: 12, 10**30: 14}.
    let two63 = 1i128 << 63;
    let keys: Vec<Vec<u8>> = vec![
        long1(two63 - 1),
        float(2f64.powi(63)),
        long1(two63),
        long1(-two63),
        float(-(2f64.powi(63))),
        long1(two63 - 1024),
        float(9_223_372_036_854_774_784.0),
        long1(1 << 64),
        float(2f64.powi(64)),
        long1(-(1 << 64)),
        float(-(2f64.powi(64))),
        long1((1 << 70) + 1),
        float(2f64.powi(70)),
        long1(10i128.pow(30)),
        long1(10i128.pow(30)),
    ];
    let want = [0, 2, 4, 6, 8, 10, 11, 12, 14];
    // As the only keys (compared by scanning) and after ten others (through the hash index).
    for padding in [0, 10] {
        let mut p = Pickle::new().op(b"}(");
        for i in 0..padding {
            p = p.str(&format!("pad{i}")).int(-1);
        }
        for (i, key) in keys.iter().enumerate() {
            p = p.op(key).int(i as i64);
        }
        let items = dict_items(p.op(b"u").stop());
        let values: Vec<i64> = items[padding..]
            .iter()
            .map(|(_, v)| match v {
                Value::Int(i) => *i,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(values, want, "padding {padding}");
        let first_keys: Vec<String> = items[padding..]
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(
            first_keys,
            [
                "9223372036854775807",
                "9.223372036854776e+18",
                "-9223372036854775808",
                "9223372036854774784",
                "18446744073709551616",
                "-18446744073709551616",
                "1180591620717411303425",
                "1.1805916207174113e+21",
                "1000000000000000000000000000000",
            ]
        );
    }
}

#[test]
fn bytes_keys_equal_bytes_only() {
    // {b'a': 1, b'a': 2, 'a': 3} is {b'a': 2, 'a': 3} in Python (bytes never equal a str).
    let p = Pickle::new()
        .op(b"}(C\x01a")
        .int(1)
        .op(b"C\x01a")
        .int(2)
        .str("a")
        .int(3)
        .op(b"u")
        .stop();
    assert_eq!(
        dict_items(p),
        vec![
            (Value::Bytes(b"a".to_vec()), Value::Int(2)),
            (Value::Str("a".into()), Value::Int(3)),
        ]
    );
}
