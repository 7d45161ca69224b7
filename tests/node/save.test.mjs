// The writers of the npm package (pkg-template/src/save.mjs over src/wasm/write.rs):
// `ckpt.toSafetensors()`, `ckpt.toPt()` and `save(tensors)` give files that load back (in ptload,
// and by make_convert.py's torch-checked digests) with the same tensors.

import assert from "node:assert/strict";
import { test } from "node:test";

import { fixture, fixtureJson, ptload, sha256 } from "./helpers.mjs";

const expected = fixtureJson("expected_convert.json").cases;

/** path → sha256 of the contiguous bytes, for every tensor. */
async function digests(ckpt) {
  const out = {};
  for (const [path, t] of ckpt.tensors()) out[path] = sha256(await t.contiguousBytes());
  return out;
}

test("toPt of a legacy file loads back with torch's digests", async () => {
  const ckpt = await ptload.load(fixture("legacy/views.pt"));
  const bytes = await ckpt.toPt();
  assert.ok(bytes instanceof Uint8Array);
  const back = await ptload.load(bytes);
  assert.equal(back.format, "zip");
  const want = Object.fromEntries(
    expected.legacy_views_to_pt.tensors.map((t) => [t.path, t.sha256]),
  );
  assert.deepEqual(await digests(back), want);
});

test("toSafetensors writes every tensor with the safetensors crate", async () => {
  const ckpt = await ptload.load(fixture("zip/state_dict.pt"));
  const bytes = await ckpt.toSafetensors();
  // The header: u64 length, then JSON with __metadata__ {"format": "pt"}.
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  assert.equal(header.__metadata__.format, "pt");
  for (const [path, t] of ckpt.tensors()) {
    const [begin, end] = header[path].data_offsets;
    const data = bytes.subarray(8 + n + begin, 8 + n + end);
    assert.equal(sha256(data), sha256(await t.contiguousBytes()), path);
    assert.deepEqual(header[path].shape, t.shape);
  }
});

test("save(tensors) from plain TypedArrays", async () => {
  const bytes = await ptload.save({
    w: { dtype: "float32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
    n: { dtype: "int64", shape: [], data: new BigInt64Array([7n]) },
  });
  const back = await ptload.load(bytes);
  assert.deepEqual([...back.tensor("w").data], [1, 2, 3, 4]);
  assert.equal(back.tensor("n").data[0], 7n);
});

test("an unsupported dtype is named", async () => {
  const ckpt = await ptload.load(fixture("convert/complex128.pt"));
  await assert.rejects(ckpt.toSafetensors(), {
    message:
      "unsupported: tensor 'c' has dtype complex128, which safetensors cannot store " +
      "(use --skip-unsupported to leave it out)",
  });
});
