// `root` as plain JS: objects for str-keyed dicts, Maps otherwise, arrays, numbers and BigInts,
// strings, Uint8Arrays, Sets, the same Tensor objects `tensors()` lists, inert objects.

import assert from "node:assert/strict";
import { test } from "node:test";

import { fixture, ptload } from "./helpers.mjs";

test("nested plain values are exact", async () => {
  const ckpt = await ptload.load(fixture("zip/nested.pt"));
  const r = ckpt.root;
  assert.equal(Object.getPrototypeOf(r), Object.prototype);
  assert.deepEqual(r.ints.slice(0, 4), [0, 1, -1, 255]);
  assert.equal(r.ints[8], 2147483647);
  assert.ok(r.ints.includes(9223372036854775807n));
  assert.ok(r.ints.includes(1180591620717411303424n));
  assert.ok(r.ints.includes(-1180591620717411303424n));
  assert.ok(Object.is(r.floats[1], -0));
  assert.ok(r.floats.includes(Infinity) && r.floats.some(Number.isNaN));
  assert.equal(r.str, "héllo wörld ✓ 日本");
  assert.deepEqual(r.bytes, Uint8Array.from([0, 255, 97, 98, 99]));
  assert.equal(r.none, null);
  assert.deepEqual(r.tuple, [1, "two", [3, null]]);
  assert.ok(r.int_keys instanceof Map);
  assert.equal(r.int_keys.get(-3), "minus three");
  assert.equal(r.int_keys.get(100000000000000000000n), "big key");
  assert.ok(r.bool_keys instanceof Map && r.bool_keys.get(false) === "no");
  // The same tensor saved at two paths is one Tensor object, listed at both.
  assert.equal(r.tensors[0], r.tensors[2]);
  const listed = ckpt.tensors();
  assert.equal(listed[0][1], r.tensors[0]);
  assert.equal(listed[2][1], r.tensors[0]);
  assert.equal(ckpt.tensor("a.b.c"), r.a.b.c);
  // protocol 4 and 5 saves of the same object give the same tree.
  for (const rel of ["zip/protocol4.pt", "zip/protocol5.pt"]) {
    const other = await ptload.load(fixture(rel));
    assert.deepEqual(other.tensors().map(([p]) => p), listed.map(([p]) => p), rel);
    assert.deepEqual(other.root.ints, r.ints, rel);
  }
});

test("a state_dict is an object keyed by parameter name, _metadata non-enumerable", async () => {
  const ckpt = await ptload.load(fixture("zip/state_dict.pt"));
  const keys = Object.keys(ckpt.root);
  assert.deepEqual(keys, ckpt.tensors().map(([p]) => p));
  assert.ok(!keys.includes("_metadata"));
  assert.equal(ckpt.root._metadata[""].version, 1);
  for (const key of keys) assert.equal(ckpt.root[key], ckpt.tensor(key));
});

test("sets, complex, bytearray, devices, dtypes, attributes", async () => {
  const r = (await ptload.load(fixture("zip/extras.pt"))).root;
  assert.deepEqual(r.set, new Set([1, 2, 3]));
  assert.deepEqual(r.complex, { __class__: "builtins.complex", args: [1.5, -2], state: null });
  assert.deepEqual(r.bytearray, Uint8Array.from([0, 1, 97, 98]));
  assert.deepEqual(r.size, [2, 3]);
  assert.deepEqual(r.dtype, { __global__: "torch.bfloat16" });
  assert.equal(r.device.__class__, "torch.device");
  assert.deepEqual(r.device.args, ["cuda", 1]);
  assert.deepEqual(r.attr_tensor.attributes, { note: "hello" });
  assert.equal(r.param_with_state.kind, "parameter");
  assert.equal(r.param_with_state.requiresGrad, true);
});

test("optimizer state: int keys as a Map, step tensors, hyperparameters", async () => {
  const r = (await ptload.load(fixture("zip/optimizer.pt"))).root;
  assert.equal(r.epoch, 3);
  assert.ok(r.optimizer.state instanceof Map);
  assert.deepEqual([...r.optimizer.state.keys()], [0, 1, 2, 3]);
  assert.deepEqual(r.optimizer.param_groups[0].betas, [0.9, 0.99]);
  const step = r.optimizer.state.get(0).step;
  assert.deepEqual(step.shape, []);
  assert.equal(step.data.length, 1);
});

test("a __proto__ key is an own property, not the prototype", async () => {
  // {"__proto__": 1} as a protocol-2 pickle: EMPTY_DICT, BINUNICODE, BININT1, SETITEM, STOP.
  const { Pickle, zipCheckpoint } = await import("./helpers.mjs");
  const pickle = new Pickle().op("}").str("__proto__").op([0x4b, 1]).op("s").stop();
  const ckpt = await ptload.load(zipCheckpoint(pickle, []));
  assert.equal(Object.getPrototypeOf(ckpt.root), Object.prototype);
  assert.deepEqual(Object.keys(ckpt.root), ["__proto__"]);
  assert.equal(Object.getOwnPropertyDescriptor(ckpt.root, "__proto__").value, 1);
});

test("nesting up to the depth limit fits the wasm stack; deeper is refused with the limit", async () => {
  const { zipCheckpoint } = await import("./helpers.mjs");
  const nested = (depth) => {
    // MARK × depth, EMPTY_LIST, LIST × depth: a list nested `depth` deep (protocol 2).
    const body = "(".repeat(depth) + "]" + "l".repeat(depth);
    return Uint8Array.from(Buffer.concat([Buffer.from([0x80, 2]), Buffer.from(body, "latin1"), Buffer.from(".")]));
  };
  const dicts = (depth) => {
    // MARK, BINUNICODE "k" × depth, EMPTY_DICT, DICT × depth: {"k": {"k": ... {}}}.
    const level = Buffer.from([0x28, 0x58, 1, 0, 0, 0, 0x6b]);
    return Uint8Array.from(Buffer.concat([Buffer.from([0x80, 2]), ...new Array(depth).fill(level), Buffer.from("}" + "d".repeat(depth) + ".", "latin1")]));
  };
  let v = (await ptload.load(zipCheckpoint(nested(990), []))).root;
  let n = 0;
  while (Array.isArray(v) && v.length) [v, n] = [v[0], n + 1];
  assert.equal(n, 990);
  v = (await ptload.load(zipCheckpoint(dicts(990), []))).root;
  n = 0;
  while (v && v.k) [v, n] = [v.k, n + 1];
  assert.equal(n, 990);
  await assert.rejects(ptload.load(zipCheckpoint(nested(5000), [])), /limit max_depth exceeded/);
});
