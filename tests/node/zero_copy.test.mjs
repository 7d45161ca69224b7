// CPU placement: `data` is a view of the caller's buffer whenever the record is stored, aligned
// for the element type and little-endian; a copy only otherwise (deflated, misaligned,
// big-endian). A Blob is read by slices: the directory and pickle first, then each record.

import assert from "node:assert/strict";
import { test } from "node:test";

import { countingBlob, fixture, Pickle, ptload, sha256, zipCheckpoint } from "./helpers.mjs";

/** Where the bytes of `view` lie within `input` (a Uint8Array), or -1 if elsewhere. */
function offsetIn(view, input) {
  if (view.buffer !== input.buffer) return -1;
  return view.byteOffset - input.byteOffset;
}

test("stored little-endian storages are views of the input buffer", async () => {
  for (const rel of ["zip/dtypes.pt", "zip/views.pt", "zip/alignment4096.pt", "zip/no_crc.pt", "zip/tied.pt"]) {
    const input = fixture(rel);
    const ckpt = await ptload.load(input);
    for (const s of ckpt.storages) {
      if (s.nbytes === 0) continue;
      assert.ok(s.zeroCopy, `${rel}: storage ${s.key} was copied`);
      assert.ok(offsetIn(s.bytes, input) >= 0, `${rel}: storage ${s.key} is not in the input`);
    }
    for (const [path, t] of ckpt.tensors()) {
      if (t.numel === 0) continue;
      const at = offsetIn(t.data, input);
      assert.ok(at >= 0, `${rel}: ${path} data is not a view of the input`);
      // The view starts at the tensor's first element of its storage's record.
      assert.equal(at, offsetIn(t.storage.bytes, input) + t.storageOffset * t.itemsize, `${rel}: ${path}`);
    }
  }
});

test("data has the natural TypedArray of each dtype", async () => {
  const ckpt = await ptload.load(fixture("zip/dtypes.pt"));
  const kinds = Object.fromEntries(ckpt.tensors().map(([p, t]) => [p, t.data.constructor.name]));
  assert.equal(kinds.float32, "Float32Array");
  assert.equal(kinds.float64, "Float64Array");
  assert.equal(kinds.int32, "Int32Array");
  assert.equal(kinds.int64, "BigInt64Array");
  assert.equal(kinds.uint64, "BigUint64Array");
  assert.equal(kinds.bool, "Uint8Array");
  assert.equal(kinds.float8_e4m3fn, "Uint8Array");
  assert.equal(kinds.float16, "Uint16Array");
  assert.equal(kinds.bfloat16, "Uint16Array");
  assert.equal(kinds.complex64, "Float32Array");
  const f32 = ckpt.tensor("float32");
  assert.equal(f32.data.length, 6);
  const c64 = ckpt.tensor("complex64");
  assert.equal(c64.data.length, 12, "complex: real and imaginary halves interleaved");
});

test("strided views index their data with stride, from their first element", async () => {
  const input = fixture("zip/views.pt");
  const ckpt = await ptload.load(input);
  const base = ckpt.tensor("base");
  const col = ckpt.tensor("col");
  assert.equal(col.storage, base.storage, "views share the storage object");
  // col = base[:, 2] (storage offset 2): col[i] = base[i, 2]
  assert.equal(col.storageOffset, 2);
  for (let i = 0; i < col.shape[0]; i++) {
    assert.equal(col.data[i * col.stride[0]], base.data[i * base.stride[0] + 2 * base.stride[1]]);
  }
  const bytes = await col.contiguousBytes();
  assert.equal(bytes.length, col.numel * 4);
  assert.equal(bytes.buffer === input.buffer, false, "a strided view's bytes are a new buffer");
  const contiguous = await base.contiguousBytes();
  assert.equal(contiguous.buffer, input.buffer, "a contiguous tensor's bytes are a view");
});

test("deflated records are copies, with the right bytes", async () => {
  const input = fixture("zip/deflated.pt");
  const ckpt = await ptload.load(input);
  for (const s of ckpt.storages) {
    assert.equal(s.zeroCopy, false, s.key);
    if (s.bytes.length) assert.notEqual(s.bytes.buffer, input.buffer, s.key);
  }
  const stored = await ptload.load(fixture("zip/state_dict.pt"));
  for (const [path, t] of stored.tensors()) {
    const other = ckpt.tensor(path);
    assert.equal(sha256(await other.contiguousBytes()), sha256(await t.contiguousBytes()), path);
  }
});

test("big-endian files: wide dtypes are swapped copies, one-byte dtypes stay views", async () => {
  const input = fixture("zip/big_endian.pt");
  const ckpt = await ptload.load(input);
  assert.equal(ckpt.byteOrder, "big");
  const little = await ptload.load(fixture("zip/dtypes.pt"));
  for (const [path, t] of ckpt.tensors()) {
    const wide = t.dtype.includes("complex") ? t.itemsize > 2 : t.itemsize > 1;
    assert.equal(t.storage.zeroCopy, !wide, `${path} (${t.dtype})`);
    assert.equal(sha256(await t.contiguousBytes()), sha256(await little.tensor(path).contiguousBytes()), path);
  }
});

test("a buffer at an odd offset: misaligned storages are copied, bytes stay exact", async () => {
  const file = fixture("zip/dtypes.pt");
  const backing = new Uint8Array(file.length + 1);
  backing.set(file, 1);
  const input = backing.subarray(1);
  const ckpt = await ptload.load(input);
  const aligned = await ptload.load(file);
  for (const [path, t] of ckpt.tensors()) {
    const needsAlignment = t.data.BYTES_PER_ELEMENT > 1;
    assert.equal(t.storage.zeroCopy, !needsAlignment, `${path} (${t.dtype})`);
    assert.equal(t.data.byteOffset % t.data.BYTES_PER_ELEMENT, 0, path);
    assert.equal(sha256(await t.contiguousBytes()), sha256(await aligned.tensor(path).contiguousBytes()), path);
  }
});

test("an ArrayBuffer and a Uint8Array at an offset are viewed too", async () => {
  const file = fixture("examples/../zip/tied.pt");
  const ab = file.buffer.slice(file.byteOffset, file.byteOffset + file.length);
  const ckpt = await ptload.load(ab);
  for (const [, t] of ckpt.tensors()) assert.equal(t.data.buffer, ab);
  const backing = new Uint8Array(file.length + 64);
  backing.set(file, 64);
  const viewed = await ptload.load(backing.subarray(64));
  for (const [, t] of viewed.tensors()) {
    assert.equal(t.data.buffer, backing.buffer);
    assert.ok(t.storage.zeroCopy);
  }
});

test("a Blob is read by slices: metadata first, then each record once, never the whole file", async () => {
  const n = 65536; // four 256 KiB float32 storages: far more than the tail window
  let p = new Pickle().op("}(");
  const keys = ["a", "b", "c", "d"];
  keys.forEach((key, i) => {
    p = p.str(key).tensor("FloatStorage", String(i), n, 0, [n], [1]);
  });
  const pickle = p.op("u").stop();
  const records = keys.map((_, i) => [String(i), new Uint8Array(n * 4).fill(i + 1)]);
  const file = zipCheckpoint(pickle, records);
  const { blob, reads } = countingBlob(file);
  const events = [];
  const ckpt = await ptload.load(blob, { onProgress: (e) => events.push(e) });
  const names = ckpt.tensors().map(([p]) => p);
  assert.deepEqual(names, keys);
  ckpt.tensors().forEach(([, t], i) => {
    assert.equal(t.data.length, n);
    assert.ok(new Uint8Array(t.data.buffer, t.data.byteOffset, n * 4).every((b) => b === i + 1));
  });
  assert.ok(reads.every(([, len]) => len < file.length), `a read covered the whole file: ${JSON.stringify(reads)}`);
  const total = reads.reduce((a, [, len]) => a + len, 0);
  assert.ok(total < file.length + 70000, `read ${total} bytes of ${file.length}`);
  // Each record read exactly once (besides what the tail window happened to cover).
  for (const [key] of records) {
    const s = ckpt.storages.find((x) => x.key === key);
    assert.ok(s.bytes.length === n * 4);
  }
  assert.ok(reads.length <= 10, `${reads.length} reads`);
  // Progress: monotonic, ends at the total.
  for (let i = 1; i < events.length; i++) assert.ok(events[i].loadedBytes >= events[i - 1].loadedBytes);
  assert.deepEqual(events.at(-1), { loadedBytes: file.length, totalBytes: file.length });
});

test("a legacy file read from a Blob is read whole once, then viewed", async () => {
  const file = fixture("legacy/state_dict.pt");
  const { blob, reads } = countingBlob(file);
  const ckpt = await ptload.load(blob);
  assert.ok(ckpt.tensors().length > 0);
  const whole = reads.filter(([o, l]) => o === 0 && l === file.length);
  assert.equal(whole.length, 1, JSON.stringify(reads));
});

test("a strided view's contiguousBytes walks the plan's runs, over many wasm calls", async () => {
  // A uint8 300 x 300 storage and its transpose: 90,000 runs of one byte in 300 groups; and a
  // 5000 x 2 transpose: 5,000 groups (the walker hands out 4,096 per call). Each element is
  // checked against the transpose computed here.
  const n = 300;
  const storage = Uint8Array.from({ length: n * n }, (_, k) => (k * 7 + 3) & 255);
  const pickle = new Pickle().op("]").op("(")
    .tensor("ByteStorage", "0", n * n, 0, [n, n], [1, n])
    .tensor("ByteStorage", "0", n * n, 0, [n, n], [n, 1])
    .tensor("ByteStorage", "0", n * n, 5, [3, 2], [n, 2])
    .tensor("ByteStorage", "0", n * n, 0, [5000, 2], [1, 5000])
    .op("e").stop();
  const ckpt = await ptload.load(zipCheckpoint(pickle, [["0", storage]]));
  const [[, t], [, c], [, s], [, long]] = ckpt.tensors();
  assert.deepEqual([t.isContiguous, c.isContiguous, s.isContiguous], [false, true, false]);
  const want = new Uint8Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) want[i * n + j] = storage[j * n + i];
  assert.deepEqual(await t.contiguousBytes(), want);
  const wantLong = Uint8Array.from({ length: 10000 }, (_, k) => storage[(k % 2) * 5000 + Math.floor(k / 2)]);
  assert.deepEqual(await long.contiguousBytes(), wantLong);
  // Contiguous: a view of the same memory as data.
  const bytes = await c.contiguousBytes();
  assert.equal(bytes.buffer, c.data.buffer);
  assert.equal(bytes.byteOffset, c.data.byteOffset);
  const small = [0, 1, 2, 3].flatMap((i) => (i < 3 ? [0, 1].map((j) => storage[5 + i * n + j * 2]) : []));
  assert.deepEqual([...(await s.contiguousBytes())], small);
  // data spans from the first element through the last one reached.
  assert.equal(s.data.length, 2 * n + 2 + 1);
  assert.equal(s.data[0], storage[5]);
});
