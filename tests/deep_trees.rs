//! Trees as deep as the limits allow load, walk, print and drop on a spawned thread's default
//! 2 MiB stack: no walk over the object tree recurses on the caller's stack.

mod common;

use common::{Pickle, ZipBuilder};
use ptload::{ErrorKind, Limits, Loader};

/// A zip checkpoint whose `data.pkl` is a list nested `depth` deep around one tensor.
fn nested_lists(depth: usize) -> Vec<u8> {
    let pickle = Pickle::new()
        .op(&vec![b']'; depth])
        .tensor("FloatStorage", "0", 1, 0, &[1], &[1])
        .op(&vec![b'a'; depth])
        .stop();
    ZipBuilder::checkpoint(&pickle, &[("0", &1.5f32.to_le_bytes())])
}

/// Runs `f` on a thread with the default stack of spawned threads (2 MiB).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Loads `bytes`, then walks the tree every way the crate offers, and drops it.
fn load_and_walk(bytes: Vec<u8>, limits: Limits, depth: usize) -> Result<(), String> {
    let ckpt = Loader::new()
        .limits(limits)
        .load_bytes(bytes)
        .map_err(|e| e.to_string())?;
    let path = vec!["0"; depth].join(".");
    let tensors: Vec<_> = ckpt.tensors().map(|(p, _)| p.to_owned()).collect();
    assert_eq!(tensors, std::slice::from_ref(&path));
    let t = ckpt.tensor(&path).expect("the tensor by its path");
    assert_eq!(t.to_contiguous_bytes().unwrap(), 1.5f32.to_le_bytes());
    let json = ptload::torch::json::tree(&ckpt.root, &|_| None);
    assert!(json.starts_with("[[[") && json.ends_with("]]]"));
    let text = ckpt.root.to_string();
    assert_eq!(text.len(), 2 * depth + "tensor(float32 [1])".len());
    drop(ckpt);
    Ok(())
}

#[test]
fn a_tree_as_deep_as_max_depth_loads_and_walks_on_a_2_mib_stack() {
    let max = Limits::default().max_depth as usize;
    // The deepest nesting the default limits accept (the tensor's own arguments nest a few
    // levels further down), and one level more is refused, by name.
    let deepest = (max - 8..=max)
        .rev()
        .find(|&n| Loader::new().load_bytes(nested_lists(n)).is_ok())
        .expect("lists nested nearly max_depth deep load");
    let e = Loader::new()
        .load_bytes(nested_lists(deepest + 1))
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::LimitExceeded {
                limit: "max_depth",
                ..
            }
        ),
        "{e}"
    );
    on_small_stack(move || load_and_walk(nested_lists(deepest), Limits::default(), deepest))
        .unwrap();
}

#[test]
fn a_100_000_deep_tree_without_limits_is_ok_or_a_clean_error_never_a_crash() {
    for depth in [100_000, 99_990] {
        match on_small_stack(move || load_and_walk(nested_lists(depth), Limits::none(), depth)) {
            Ok(()) => assert_eq!(depth, 99_990, "deeper than Limits::none's max_depth"),
            Err(e) => {
                assert_eq!(depth, 100_000, "{e}");
                assert!(e.contains("<memory>: limit max_depth exceeded"), "{e}");
            }
        }
    }
}

#[test]
fn a_deep_tree_whose_load_fails_after_parsing_is_dropped_without_recursion() {
    // The pickle parses, then planning fails (the tensor's record is missing): the parsed
    // tree is dropped on the error path, on a 2 MiB stack.
    let depth = 99_990;
    let pickle = Pickle::new()
        .op(&vec![b']'; depth])
        .tensor("FloatStorage", "0", 1, 0, &[1], &[1])
        .op(&vec![b'a'; depth])
        .stop();
    let e = on_small_stack(move || {
        Loader::new()
            .limits(Limits::none())
            .load_bytes(ZipBuilder::checkpoint(&pickle, &[]))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    });
    assert!(e.contains("archive/data/0"), "{e}");
}

/// The deepest `make(n)` that loads under `max_depth` 10.
fn deepest_loading(make: impl Fn(usize) -> Pickle) -> usize {
    let loads = |n| {
        Loader::new()
            .limits(Limits::default().with_max_depth(10))
            .load_bytes(ZipBuilder::checkpoint(&make(n).stop(), &[]))
            .is_ok()
    };
    assert!(loads(1) && !loads(30));
    (1..30).take_while(|&n| loads(n)).last().unwrap()
}

/// `n` tuples around `None`: `((None,),)` for 2.
fn nested_tuples(p: Pickle, n: usize) -> Pickle {
    p.op(b"N").op(&vec![0x85; n])
}

#[test]
fn dict_keys_and_values_count_toward_max_depth_as_list_items_do() {
    // [[…[None]…]] and {'a': {'a': … None}} nest alike.
    let lists = deepest_loading(|n| Pickle::new().op(&vec![b']'; n]).op(b"N").op(&vec![b'a'; n]));
    let dicts = deepest_loading(|n| {
        let mut p = Pickle::new();
        for _ in 0..n {
            p = p.op(b"}").str("a");
        }
        p.op(b"N").op(&vec![b's'; n])
    });
    assert_eq!(dicts, lists);
    // [(((None,),),)] and {(((None,),),): None}: a key is as deep as an item.
    let in_list = deepest_loading(|n| nested_tuples(Pickle::new().op(b"]"), n).op(b"a"));
    let as_key = deepest_loading(|n| nested_tuples(Pickle::new().op(b"}"), n).op(b"Ns"));
    assert_eq!(as_key, in_list);
    assert_eq!(
        in_list + 1,
        lists,
        "a list around tuples is one level of them"
    );
}

/// `[[…[None]…]]`, `n` lists deep.
fn nested_lists_around_none(p: Pickle, n: usize) -> Pickle {
    p.op(&vec![b']'; n]).op(b"N").op(&vec![b'a'; n])
}

/// The deepest `make(n)` that loads under `max_depth` 10, other globals allowed.
fn deepest_loading_any_global(make: impl Fn(usize) -> Pickle) -> usize {
    let loads = |n| {
        Loader::new()
            .weights_only(false)
            .limits(Limits::default().with_max_depth(10))
            .load_bytes(ZipBuilder::checkpoint(&make(n).stop(), &[]))
            .is_ok()
    };
    assert!(loads(3) && !loads(30));
    (3..30).take_while(|&n| loads(n)).last().unwrap()
}

#[test]
fn object_states_and_tensor_subclass_parts_count_toward_max_depth() {
    // [state] and an object whose BUILD state is `state`: the state is one level down in both.
    let in_list = deepest_loading_any_global(|n| nested_lists_around_none(Pickle::new(), n + 1));
    let object = deepest_loading_any_global(|n| {
        nested_lists_around_none(Pickle::new().global("__main__", "C").op(b")\x81"), n).op(b"b")
    });
    assert_eq!(object, in_list);
    // _rebuild_from_type_v2(_rebuild_tensor_v2, new_type, args, state), with `state` (then
    // `new_type`) nested: each is one level below the call, as an item of a list is.
    let from_type = |n: usize, nested_state: bool| {
        let p = Pickle::new()
            .global("torch._tensor", "_rebuild_from_type_v2")
            .op(b"(")
            .global("torch._utils", "_rebuild_tensor_v2");
        let p = if nested_state {
            p.global("torch", "Tensor")
        } else {
            nested_lists_around_none(p, n)
        };
        let p = p.op(b"(").plain_v2_args().op(b"t");
        let p = if nested_state {
            nested_lists_around_none(p, n)
        } else {
            p.op(b"}")
        };
        p.op(b"tR")
    };
    for nested_state in [true, false] {
        let loads = |n: usize| {
            Loader::new()
                .weights_only(false)
                .limits(Limits::default().with_max_depth(10))
                .load_bytes(ZipBuilder::checkpoint(
                    &from_type(n, nested_state).stop(),
                    &[("0", &[0u8; 8])],
                ))
                .is_ok()
        };
        assert!(loads(3) && !loads(30));
        let deepest = (3..30).take_while(|&n| loads(n)).last().unwrap();
        assert_eq!(deepest, in_list, "nested state: {nested_state}");
    }
}

#[test]
fn an_ordered_dict_state_counts_toward_max_depth_as_an_object_state_does() {
    // [state] and OrderedDict() whose BUILD state is `state` (a state_dict's `_metadata`
    // arrives so): the state is one level below the dict in both.
    let in_list = deepest_loading(|n| nested_lists_around_none(Pickle::new(), n + 1));
    let ordered = deepest_loading(|n| {
        nested_lists_around_none(
            Pickle::new().global("collections", "OrderedDict").op(b")R"),
            n,
        )
        .op(b"b")
    });
    assert_eq!(ordered, in_list);
}
