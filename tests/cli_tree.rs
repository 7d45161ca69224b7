//! `ptload inspect --tree` and the `root` field of `--json` (DESIGN.md's CLI contract): the
//! scalars torch 2.15 loaded are at their paths (`scalars` in expected_formats.json), every
//! tensor is referenced by its path in `tensors` (all fixtures), long containers are elided
//! with a count, and the text is pinned line for line.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{fixture_json, root};
use serde_json::Value as Json;

fn ptload(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ptload"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const TRAINING: &str = "tests/fixtures/modules/training_checkpoint.pt";
const FULL_MODULE: &str = "tests/fixtures/modules/full_module.pt";

/// `--tree` of the training checkpoint (default `--max-items 10`).
const TRAINING_TREE: &str = r"dict, 8 items
  'epoch': 10
  'arch': 'mlp'
  'model': collections.OrderedDict, 4 items
    '0.weight': tensor float32 [4, 3] cpu 48 B
    '0.bias': tensor float32 [4] cpu 16 B
    '2.weight': tensor float32 [2, 4] cpu 32 B
    '2.bias': tensor float32 [2] cpu 8 B
    ._metadata: collections.OrderedDict, 4 items
      '': dict, 1 item
        'version': 1
      '0': dict, 1 item
        'version': 1
      '1': dict, 1 item
        'version': 1
      '2': dict, 1 item
        'version': 1
  'optimizer': dict, 2 items
    'state': dict, empty
    'param_groups': list, 1 item
      [0]: dict, 11 items
        'lr': 0.1
        'momentum': 0.9
        'dampening': 0
        'weight_decay': 0.0001
        'nesterov': False
        'maximize': False
        'foreach': None
        'differentiable': False
        'fused': None
        'initial_lr': 0.1
        ... 1 more item
  'scheduler': dict, 8 items
    'step_size': 30
    'gamma': 0.1
    'base_lrs': [0.1]
    'last_epoch': 0
    '_step_count': 1
    '_is_initial': False
    '_get_lr_called_within_step': False
    '_last_lr': [0.1]
  'best_acc1': 76.5
  'losses': list, 25 items
    [0]: 2.5
    [1]: 1.25
    [2]: 0.833333
    [3]: 0.625
    [4]: 0.5
    [5]: 0.416667
    [6]: 0.357143
    [7]: 0.3125
    [8]: 0.277778
    [9]: 0.25
    ... 15 more items
  'args': argparse.Namespace
    .arch: 'mlp'
    .lr: 0.1
    .batch_size: 32
    .epochs: 90
    .resume: None
    .amp: False
    .data: '/data/imagenet'
";

#[test]
fn training_checkpoint_tree_is_pinned() {
    let got = ptload(&["inspect", "--tree", "--no-weights-only", TRAINING]);
    assert_eq!(got, TRAINING_TREE);
    // The same output every time (nothing hashed or sorted by address).
    assert_eq!(
        ptload(&["inspect", "--tree", "--no-weights-only", TRAINING]),
        got
    );
}

#[test]
fn long_containers_are_elided_with_a_count() {
    let got = ptload(&[
        "inspect",
        "--tree",
        "--max-items",
        "3",
        "--no-weights-only",
        TRAINING,
    ]);
    let want = "dict, 8 items\n  'epoch': 10\n  'arch': 'mlp'\n  'model': collections.OrderedDict, 4 items\n    '0.weight': tensor float32 [4, 3] cpu 48 B\n    '0.bias': tensor float32 [4] cpu 16 B\n    '2.weight': tensor float32 [2, 4] cpu 32 B\n    ... 2 more items\n  ... 5 more items\n";
    assert_eq!(got, want);
    let all = ptload(&[
        "inspect",
        "--tree",
        "--max-items",
        "0",
        "--no-weights-only",
        TRAINING,
    ]);
    assert!(!all.contains("more item"), "{all}");
    assert!(all.contains("    [24]: 0.1\n"), "{all}");
}

/// The value at a `.`-joined path of the JSON tree: objects' state first, then keys (which may
/// themselves hold dots: the longest matching key wins), array indices.
fn at_path<'j>(mut node: &'j Json, path: &str) -> Option<&'j Json> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut i = 0;
    while i < segments.len() {
        if node.get("__class__").is_some() {
            node = &node["state"];
        }
        match node {
            Json::Array(items) => {
                node = items.get(segments[i].parse::<usize>().ok()?)?;
                i += 1;
            }
            Json::Object(map) => {
                let n = (i + 1..=segments.len())
                    .rev()
                    .find(|&n| map.contains_key(&segments[i..n].join(".")))?;
                node = &map[&segments[i..n].join(".")];
                i = n;
            }
            _ => return None,
        }
    }
    Some(node)
}

#[test]
fn json_root_holds_every_scalar_torch_loaded() {
    let expected = fixture_json("expected_formats.json");
    let scalars = expected["files"]["modules/training_checkpoint.pt"]["scalars"]
        .as_object()
        .unwrap();
    assert!(scalars.len() > 40, "{}", scalars.len());
    let report: Json = serde_json::from_str(&ptload(&[
        "inspect",
        "--json",
        "--no-weights-only",
        TRAINING,
    ]))
    .unwrap();
    let tree = &report["root"];
    for (path, want) in scalars {
        assert_eq!(at_path(tree, path), Some(want), "{path}");
    }
    assert_eq!(tree["args"]["__class__"], "argparse.Namespace");
    assert_eq!(tree["args"]["args"], Json::Array(vec![]));
    assert_eq!(tree["model"]["0.weight"]["__tensor__"], "model.0.weight");
    assert_eq!(tree["optimizer"]["state"], serde_json::json!({}));
    // Keys keep the file's order (torch's insertion order), not sorted.
    let keys: Vec<&String> = tree.as_object().unwrap().keys().collect();
    let text = ptload(&["inspect", "--json", "--no-weights-only", TRAINING]);
    let mut last = 0;
    for key in [
        "epoch",
        "arch",
        "model",
        "optimizer",
        "scheduler",
        "best_acc1",
        "losses",
        "args",
    ] {
        let at = text.find(&format!("\"{key}\":")).unwrap();
        assert!(at > last, "{key} out of order: {keys:?}");
        last = at;
    }
}

fn tensor_refs(node: &Json, out: &mut Vec<String>) {
    match node {
        Json::Object(map) => {
            if let Some(path) = map.get("__tensor__") {
                out.push(path.as_str().unwrap_or("<unlisted>").to_owned());
            }
            map.values().for_each(|v| tensor_refs(v, out));
        }
        Json::Array(items) => items.iter().for_each(|v| tensor_refs(v, out)),
        _ => {}
    }
}

#[test]
fn json_root_references_every_tensor_by_its_path() {
    let mut checked = 0;
    for json in ["expected.json", "expected_formats.json"] {
        let expected = fixture_json(json);
        for (rel, want) in expected["files"].as_object().unwrap() {
            let path = format!("tests/fixtures/{rel}");
            let mut args = vec!["inspect", "--json", path.as_str()];
            if want.get("weights_only") == Some(&Json::Bool(false)) {
                args.push("--no-weights-only");
            }
            if let Some(encoding) = want.get("encoding").and_then(Json::as_str) {
                args.extend(["--encoding", encoding]);
            }
            let report: Json = serde_json::from_str(&ptload(&args)).unwrap();
            let mut refs = Vec::new();
            tensor_refs(&report["root"], &mut refs);
            let mut listed: Vec<String> = report["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["path"].as_str().unwrap().to_owned())
                .filter(|p| report["format"] != "torchscript" || !p.starts_with("constants."))
                .collect();
            let mut sorted_refs = refs.clone();
            sorted_refs.sort();
            listed.sort();
            assert_eq!(sorted_refs, listed, "{rel}");
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
}

#[test]
fn full_module_tree_shows_every_tensor_with_torch_digests() {
    let expected = fixture_json("expected_formats.json");
    let want = expected["files"]["modules/full_module.pt"]["tensors"]
        .as_array()
        .unwrap();
    let tree = ptload(&[
        "inspect",
        "--tree",
        "--max-items",
        "0",
        "--sha256",
        "--no-weights-only",
        FULL_MODULE,
    ]);
    let digests: HashMap<&str, usize> = tree
        .lines()
        .filter_map(|l| l.split_once(" sha256=").map(|(_, d)| d))
        .fold(HashMap::new(), |mut m, d| {
            *m.entry(d).or_default() += 1;
            m
        });
    assert_eq!(digests.values().sum::<usize>(), want.len(), "{tree}");
    for w in want {
        assert!(
            digests.contains_key(w["sha256"].as_str().unwrap()),
            "{}: {tree}",
            w["path"]
        );
    }
    assert!(tree.starts_with("__main__.FullNet\n  .training: True\n  ._parameters: dict, 1 item\n    'weight': Parameter float32 [4, 3] cpu 48 B requires_grad sha256="), "{tree}");
    assert!(
        tree.contains(
            "\n    'body': torch.nn.modules.container.Sequential\n      .training: True\n"
        ),
        "{tree}"
    );
    assert!(tree.contains("\n            'bias': None\n"), "{tree}");
    assert!(tree.ends_with("\n  .extra: tensor int64 [3] cpu 24 B sha256=ab25350e3e65efebe24584461683ecda68725576e825e550038b90e7b1479946\n"), "{tree}");
}

#[test]
fn tree_digests_are_torchs_even_under_dotted_keys() {
    let expected = fixture_json("expected_formats.json");
    let want = expected["files"]["modules/training_checkpoint.pt"]["tensors"]
        .as_array()
        .unwrap();
    let tree = ptload(&[
        "inspect",
        "--tree",
        "--sha256",
        "--no-weights-only",
        TRAINING,
    ]);
    for w in want {
        // `model.0.weight` is the key '0.weight' of 'model'.
        let key = w["path"].as_str().unwrap().strip_prefix("model.").unwrap();
        let line = format!("    '{key}': tensor {} ", w["dtype"].as_str().unwrap());
        let found = tree
            .lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_else(|| panic!("{line}: {tree}"));
        assert!(
            found.ends_with(&format!(" sha256={}", w["sha256"].as_str().unwrap())),
            "{found}"
        );
    }
}
