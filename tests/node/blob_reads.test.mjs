// How a Blob (and, in Node, a path) is read (api.mjs `recordBytes`, `ReadAhead`): neighbouring
// records in one read of at most 4 MiB, a record of up to 16 MiB in one read whose ArrayBuffer
// becomes its storage's, a bigger one in parts into its own buffer (a Blob's in 16 MiB parts,
// streamed; a file's in 4 MiB parts read straight into it); in Node, a Blob's record of 4 MiB or
// more streamed in parts into a buffer a worker made (fresh-buffers.cjs); every record's bytes
// read once; up to 6 reads under way, the bytes under way bounded; the same bytes as
// load(buffer) for every fixture (big-endian, misaligned and deflated ones included); errors
// that name the file. A spying Blob records every read.

import assert from "node:assert/strict";
import { mkdtempSync, openAsBlob, promises as fsp, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import { allFixtures, optionsFor, Pickle, PKG, ptload, zipCheckpoint } from "./helpers.mjs";

const MiB = 1 << 20;
/** The wasm module's classes, the instance the package uses (to count what enters its memory). */
const { Planner } = createRequire(import.meta.url)(join(PKG, "wasm", "ptload_wasm.cjs"));
/** The zip tail window the planner reads first (api.mjs TAIL_BYTES, from a multiple of 64): a
 * record partly in it is partly read twice, so coverage is checked before it. */
const TAIL_BYTES = 65557 + 22 + 76 + 63;

const dir = mkdtempSync(join(tmpdir(), "ptload-blob-reads-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A Blob over `bytes` that records every read: `reads` ([start, length, how]), how each read
 * ended (`ended`: [start, "end" or "cancel"], a stream's), the most reads and bytes under way at
 * once, and every ArrayBuffer it handed out. `beforeChunk(start, k)`: a stream's k-th chunk
 * waits for the promise it returns, if any. With `delayMs`, each read
 * takes that long (so that reads under way overlap); the one at `slowAt` takes `slowMs`, and
 * `aheadOfSlow` counts the bytes asked for meanwhile. `cut`: reads past it come back short. */
function spyBlob(bytes, { delayMs = 0, slowAt, slowMs = 0, name, cut, beforeChunk } = {}) {
  const blob = new Blob([bytes]);
  const spy = { reads: [], ended: [], pending: 0, pendingBytes: 0, maxPending: 0, maxPendingBytes: 0, handed: new Set() };
  let slow = false;
  const begin = (start, end, how) => {
    spy.reads.push([start, end - start, how]);
    spy.pending++;
    spy.pendingBytes += end - start;
    spy.maxPending = Math.max(spy.maxPending, spy.pending);
    spy.maxPendingBytes = Math.max(spy.maxPendingBytes, spy.pendingBytes);
    if (slow) spy.aheadOfSlow += end - start;
    if (start === slowAt) (slow = true), (spy.aheadOfSlow = 0);
  };
  const finish = (start, end) => {
    spy.pending--;
    spy.pendingBytes -= end - start;
    if (start === slowAt) slow = false;
  };
  const wait = (start) => new Promise((resolve) => setTimeout(resolve, start === slowAt ? slowMs : delayMs));
  const part = (start, end) => {
    const stop = cut === undefined ? end : Math.max(start, Math.min(end, cut));
    return {
      size: end - start,
      async arrayBuffer() {
        begin(start, end, "arrayBuffer");
        try {
          if (delayMs) await wait(start);
          const ab = await blob.slice(start, stop).arrayBuffer();
          spy.handed.add(ab);
          return ab;
        } finally {
          finish(start, end);
        }
      },
      stream() {
        begin(start, end, "stream");
        let at = start;
        return new ReadableStream({
          async pull(controller) {
            if (delayMs && at === start) await wait(start);
            if (at >= stop) {
              finish(start, end);
              spy.ended.push([start, "end"]);
              controller.close();
              return;
            }
            const n = Math.min(64 << 10, stop - at);
            await beforeChunk?.(start, (at - start) / (64 << 10));
            controller.enqueue(new Uint8Array(await blob.slice(at, at + n).arrayBuffer()));
            at += n;
          },
          cancel() {
            finish(start, end);
            spy.ended.push([start, "cancel"]);
          },
        });
      },
    };
  };
  spy.blob = {
    size: blob.size,
    type: "",
    name,
    slice: (start = 0, end = blob.size) => part(start, Math.min(end, blob.size)),
    arrayBuffer: () => Promise.reject(new Error("the whole Blob was read")),
    stream: () => {
      throw new Error("the whole Blob was read");
    },
  };
  return spy;
}

/** A zip checkpoint of float32 storages `sizes` (bytes each), named "t0", "t1", …; storage k
 * holds bytes (k * 7 + i) & 255. Returns the file and each record's [start, length] in it. */
function checkpoint(sizes, options) {
  let p = new Pickle().op("}(");
  sizes.forEach((n, k) => {
    p = p.str(`t${k}`).tensor("FloatStorage", String(k), n / 4, 0, [n / 4], [1]);
  });
  const records = sizes.map((n, k) => {
    const data = new Uint8Array(n);
    for (let i = 0; i < n; i++) data[i] = (k * 7 + i) & 255;
    return [String(k), data];
  });
  const file = zipCheckpoint(p.op("u").stop(), records, options);
  const where = records.map(([key, data]) => {
    const start = dataStart(file, key);
    assert.ok(file.subarray(start, start + Math.min(data.length, 64)).equals(data.subarray(0, 64)));
    return [start, data.length];
  });
  return { file, where };
}

/** Where record `key`'s data starts in `file`: after its local header's name and `FB` field. */
function dataStart(file, key) {
  const name = Buffer.from(`archive/data/${key}`);
  const header = file.indexOf(Buffer.concat([name, Buffer.from([0x46, 0x42])]));
  return header + name.length + 4 + file.readUInt16LE(header + name.length + 2);
}

/** The reads that touch [start, start + length). */
function readsOver(reads, start, length) {
  return reads.filter(([s, n]) => s < start + length && start < s + n);
}

/** Checks every record's bytes before the tail window were read by exactly one read each. */
function eachByteOnce(reads, where, size) {
  for (const [start, length] of where) {
    const end = Math.min(start + length, size - TAIL_BYTES);
    for (let at = start; at < end;) {
      const over = readsOver(reads, at, 1);
      assert.equal(over.length, 1, `byte ${at} of the record at ${start} was read by ${JSON.stringify(over)}`);
      at = over[0][0] + over[0][1];
    }
  }
}

/** Records of 4 MiB, 16 MiB, 36 MiB + 4 KiB, 5 MiB, 128 KiB (keeping the others out of the zip
 * tail window) and 4 KiB (in it). */
const SIZES = [4 * MiB, 16 * MiB, 36 * MiB + 4096, 5 * MiB, 128 * 1024, 4096];

/** The package's JS half over its wasm module, with the host a browser gives (no `alloc`, no
 * fresh buffers), or Node's `alloc` with `fresh`. */
const { createApi } = createRequire(import.meta.url)(join(PKG, "lib", "api.cjs"));
const { freshBuffers } = createRequire(import.meta.url)(join(PKG, "lib", "fresh-buffers.cjs"));
const bindings = createRequire(import.meta.url)(join(PKG, "wasm", "ptload_wasm.cjs"));
const browserApi = createApi(() => bindings);
function nodeApi(fresh, alloc = (n) => Buffer.allocUnsafeSlow(n).buffer) {
  return createApi(() => bindings, { alloc, fresh });
}

/** A fresh-buffer maker over `inner` that records the sizes asked (`asked`), the buffers made
 * (`made`, in the order asked) and how many were asked before the first was made; each buffer
 * comes `delayMs` late. */
function spyFresh(inner, delayMs) {
  const spy = { asked: [], made: [], askedBeforeFirst: null };
  spy.make = (size) => {
    const k = spy.asked.push(size) - 1;
    return inner.make(size).then((b) => new Promise((resolve) => setTimeout(() => {
      spy.askedBeforeFirst ??= spy.asked.length;
      spy.made[k] = b;
      resolve(b);
    }, delayMs)));
  };
  return spy;
}

/** Checks records `ks` were streamed in parts of at most 16 MiB, as many as that takes. */
function streamedInParts(spy, where, ks) {
  for (const k of ks) {
    const [start, length] = where[k];
    const parts = readsOver(spy.reads, start, length);
    assert.equal(parts.length, Math.ceil(length / (16 * MiB)), `record ${k}: ${JSON.stringify(parts)}`);
    // Streamed into place (arrayBuffer() would make one more copy of each part).
    for (const [, n, how] of parts) assert.deepEqual([n <= 16 * MiB, how], [true, "stream"], JSON.stringify(parts));
  }
}

/** Checks the last record came with the zip tail window the planner read: not read again, a view. */
function lastCameWithTheTail(spy, where, ckpt) {
  const [lastAt, lastLength] = where[where.length - 1];
  const last = readsOver(spy.reads, lastAt, lastLength);
  assert.equal(last.length, 1, JSON.stringify(last));
  assert.ok(last[0][1] > TAIL_BYTES - 64, JSON.stringify(last));
  assert.ok(spy.handed.has(ckpt.storages[where.length - 1].bytes.buffer));
}

async function sameAsBuffer(ckpt, file, what, options) {
  const want = await ptload.load(file, options);
  assert.equal(ckpt.format, want.format, what);
  assert.equal(ckpt.byteOrder, want.byteOrder, what);
  assert.equal(ckpt.storages.length, want.storages.length, what);
  ckpt.storages.forEach((s, i) => {
    const w = want.storages[i];
    assert.deepEqual([s.key, s.dtype, s.device], [w.key, w.dtype, w.device], what);
    if (w.bytes) assert.ok(Buffer.from(s.bytes.buffer, s.bytes.byteOffset, s.bytes.length).equals(w.bytes), `${what}: storage ${s.key}`);
  });
  const got = ckpt.tensors();
  const expected = want.tensors();
  assert.deepEqual(got.map(([p]) => p), expected.map(([p]) => p), what);
  for (let i = 0; i < got.length; i++) {
    const [path, t] = got[i];
    const w = expected[i][1];
    assert.deepEqual([t.dtype, t.shape, t.stride, t.storageOffset], [w.dtype, w.shape, w.stride, w.storageOffset], `${what}: ${path}`);
    if (t.data) {
      assert.equal(t.data.byteOffset % t.data.BYTES_PER_ELEMENT, 0, `${what}: ${path} is misaligned`);
      assert.ok(Buffer.from(await t.contiguousBytes()).equals(Buffer.from(await w.contiguousBytes())), `${what}: ${path}`);
    }
  }
}

test("without fresh buffers (browsers): neighbouring records are read together, at most 4 MiB at a time, each byte once", async () => {
  // 300 records of 16–100 KiB (about 17 MiB): without batching, 300 reads. Then a model's
  // layers: 1–2 MiB weights, each with a 16 KiB bias (a read per record would be 24 reads).
  const small = Array.from({ length: 300 }, (_, k) => 4 * (4096 + ((k * 7919) % 21504)));
  const layers = Array.from({ length: 12 }, (_, k) => [MiB + ((k * 331) % 256) * 4096, 16 * 1024]).flat();
  for (const [what, sizes, biggest] of [["small", small, 100 * 1024], ["layers", layers, 2 * MiB]]) {
    const { file, where } = checkpoint(sizes);
    const spy = spyBlob(file);
    const ckpt = await browserApi.load(spy.blob);
    await sameAsBuffer(ckpt, file, what);
    const recordReads = spy.reads.filter(([s, n]) => where.some(([start, length]) => s < start + length && start < s + n));
    const total = sizes.reduce((a, b) => a + b, 0);
    // Each read but the last is full to within the next record (and a local header each).
    const most = Math.ceil(total / (4 * MiB - biggest - 4096)) + 2;
    assert.ok(recordReads.length <= most, `${what}: ${recordReads.length} reads of records: ${JSON.stringify(recordReads)}`);
    for (const [, n] of recordReads) assert.ok(n <= 4 * MiB, `${what}: a read of ${n} bytes`);
    eachByteOnce(spy.reads, where, file.length);
    // Every storage is a view of one of those reads (no copy), read as one ArrayBuffer.
    for (const s of ckpt.storages) assert.ok(spy.handed.has(s.bytes.buffer), `${what}: storage ${s.key} is a copy`);
  }
});

test("the local headers of many small records are read together while planning, and the records with them", async () => {
  // 3,000 records of 16 bytes (a header about every 100 bytes): one read each was 3,000 reads
  // of local headers, then the records.
  const sizes = Array(3000).fill(16);
  const { file, where } = checkpoint(sizes);
  const spy = spyBlob(file);
  // What enters wasm memory: the headers, not the records read with them (but for those in the
  // zip tail window, which is handed in whole).
  const inserted = [];
  const insert = Planner.prototype.insert;
  Planner.prototype.insert = function (offset, bytes) {
    inserted.push([offset, bytes.length]);
    return insert.call(this, offset, bytes);
  };
  let ckpt;
  try {
    ckpt = await ptload.load(spy.blob);
  } finally {
    Planner.prototype.insert = insert;
  }
  const tail = file.length - TAIL_BYTES;
  for (const [start, length] of where.filter(([start]) => start < tail)) {
    const into = inserted.filter(([o, n]) => o < start + length && start < o + n);
    assert.deepEqual(into, [], `the record at ${start} entered wasm memory`);
  }
  await sameAsBuffer(ckpt, file, "small records");
  assert.ok(spy.reads.length <= 8, `${spy.reads.length} reads: ${JSON.stringify(spy.reads.slice(0, 20))}`);
  eachByteOnce(spy.reads, where, file.length);
  // The records are views of those reads, at the file's alignment: a few buffers, no copies.
  const buffers = new Set(ckpt.storages.map((s) => s.bytes.buffer));
  assert.ok(buffers.size <= spy.reads.length, `${buffers.size} buffers for ${spy.reads.length} reads`);
  ckpt.storages.forEach((s, k) => {
    assert.equal(s.bytes.byteOffset % 64, where[k][0] % 64, `storage ${k} is not at the file's alignment`);
  });
  // Over 12 MiB of them: planning reads of 4 MiB at most, as placement's, and kept in order.
  const more = checkpoint(Array(6000).fill(2048));
  const spyMore = spyBlob(more.file);
  await sameAsBuffer(await ptload.load(spyMore.blob), more.file, "6,000 records of 2 KiB");
  for (const [, n] of spyMore.reads) assert.ok(n <= 4 * MiB, `a read of ${n} bytes`);
  // Per 4 MiB: a planning read, and the one record between it and the next (the cap split them).
  const most = 2 * Math.ceil(more.file.length / (4 * MiB)) + 6;
  assert.ok(spyMore.reads.length <= most, `${spyMore.reads.length} reads: ${JSON.stringify(spyMore.reads)}`);
  eachByteOnce(spyMore.reads, more.where, more.file.length);
});

test("a record that starts where a kept read starts is a view of it", async () => {
  // The planner's first read is the zip tail window, from a multiple of 64 (api.mjs TAIL_BYTES
  // before the end, rounded down). Size the last record so that it starts exactly there.
  const window = TAIL_BYTES - 63;
  const probe = checkpoint([MiB, 4096]);
  const after = probe.file.length - (probe.where[1][0] + 4096); // the directory and its end
  let found = null;
  for (let n = window - after - 128; n <= window - after + 128 && !found; n += 4) {
    const c = checkpoint([MiB, n]);
    const tail = Math.floor((c.file.length - window) / 64) * 64;
    if (c.where[1][0] === tail) found = c;
  }
  assert.ok(found, "no size put the record at the start of the tail window");
  const { file, where } = found;
  const spy = spyBlob(file);
  const ckpt = await ptload.load(spy.blob);
  await sameAsBuffer(ckpt, file, "at the window's start");
  const [start, length] = where[1];
  const over = readsOver(spy.reads, start, length);
  assert.deepEqual(over.map(([s]) => s), [start], `read by ${JSON.stringify(over)}`);
  assert.equal(ckpt.storages[1].bytes.byteOffset % 64, 0);
});

test("without fresh buffers (browsers): a record of 4 to 16 MiB is one read whose ArrayBuffer is its storage's; a bigger one is streamed in 16 MiB parts", async () => {
  // (The 128 KiB one keeps the others out of the tail window; the last one lies in it.)
  const { file, where } = checkpoint(SIZES);
  const spy = spyBlob(file);
  const ckpt = await browserApi.load(spy.blob);
  await sameAsBuffer(ckpt, file, "sizes");
  for (const k of [0, 1, 3]) {
    const [start, length] = where[k];
    assert.deepEqual(readsOver(spy.reads, start, length).map(([s, n]) => [s, n]), [[start, length]], `record ${k}`);
    const s = ckpt.storages[k];
    assert.ok(spy.handed.has(s.bytes.buffer), `storage ${k} is not the ArrayBuffer read`);
    assert.deepEqual([s.bytes.byteOffset, s.bytes.buffer.byteLength], [0, length]);
  }
  streamedInParts(spy, where, [2]);
  assert.deepEqual([ckpt.storages[2].bytes.byteOffset, ckpt.storages[2].bytes.buffer.byteLength], [0, where[2][1]]);
  eachByteOnce(spy.reads, where, file.length);
  lastCameWithTheTail(spy, where, ckpt);
});

test("Node: a record of 4 MiB or more is streamed in 16 MiB parts into a buffer a worker made, asked for ahead", async () => {
  const { file, where } = checkpoint(SIZES);
  const big = [0, 1, 2, 3];
  // The package's own: those records streamed, none of them an ArrayBuffer a read handed out.
  const own = spyBlob(file);
  const ownCkpt = await ptload.load(own.blob);
  await sameAsBuffer(ownCkpt, file, "package");
  streamedInParts(own, where, big);
  for (const k of big) assert.ok(!own.handed.has(ownCkpt.storages[k].bytes.buffer), `storage ${k}`);
  // With a maker that says what it was asked, and takes 50 ms over each buffer.
  const fresh = spyFresh(freshBuffers(), 50);
  const spy = spyBlob(file);
  const ckpt = await nodeApi(fresh).load(spy.blob);
  await sameAsBuffer(ckpt, file, "fresh");
  streamedInParts(spy, where, big);
  assert.deepEqual(fresh.asked, big.map((k) => where[k][1]), "the buffers asked for, in order");
  // All four asked for before the first was made (they are well within 256 MiB).
  assert.equal(fresh.askedBeforeFirst, big.length);
  big.forEach((k, i) => {
    const bytes = ckpt.storages[k].bytes;
    assert.equal(bytes.buffer, fresh.made[i], `storage ${k} is not the buffer made for it`);
    assert.deepEqual([bytes.byteOffset, bytes.length, bytes.buffer.byteLength], [0, where[k][1], where[k][1]]);
  });
  // The smaller ones are read as before: batched, the ArrayBuffers the reads handed out.
  for (const k of [4, 5]) assert.ok(spy.handed.has(ckpt.storages[k].bytes.buffer), `storage ${k}`);
  eachByteOnce(spy.reads, where, file.length);
  lastCameWithTheTail(spy, where, ckpt);
  // Asked for ahead of the reads, not with them: twelve 4 MiB records, six reads under way.
  const many = checkpoint([...Array(12).fill(4 * MiB), 128 * 1024, 4096]);
  const manyFresh = spyFresh(freshBuffers(), 50);
  await sameAsBuffer(await nodeApi(manyFresh).load(spyBlob(many.file).blob), many.file, "twelve");
  assert.equal(manyFresh.askedBeforeFirst, 12);
});

test("Node: a batch of records under 4 MiB is one arrayBuffer() read, its records views of it, whatever its size; only records of 4 MiB or more go into buffers the worker made", async () => {
  // Batches between records of 4 MiB (each read on its own): a 2 MiB record with a 16 KiB one;
  // a 512 KiB one alone; two deflated ones of incompressible bytes, 640 KiB each as stored (a
  // 1.25 MiB batch dropped once inflated); a deflated one, a stored one of 640 KiB and one of
  // 128 KiB (a 1.4 MiB batch, most of it kept; the last part of it also in the zip tail window).
  const noise = [0, 1, 2].map(() => randomBytes(640 * 1024));
  const plain = (n, k) => new Uint8Array(n).map((_, i) => (k * 7 + i) & 255);
  const layout = [
    plain(2 * MiB, 0), plain(16 * 1024, 1), plain(4 * MiB, 2),
    plain(512 * 1024, 3), plain(4 * MiB, 4),
    noise[0], noise[1], plain(4 * MiB, 7),
    noise[2], plain(640 * 1024, 9), plain(128 * 1024, 10),
    plain(4096, 11),
  ];
  const deflated = ["5", "6", "8"];
  let pickle = new Pickle().op("}(");
  layout.forEach((bytes, k) => {
    pickle = pickle.str(`t${k}`).tensor("FloatStorage", String(k), bytes.length / 4, 0, [bytes.length / 4], [1]);
  });
  const records = layout.map((bytes, k) => [String(k), bytes]);
  const file = zipCheckpoint(pickle.op("u").stop(), records, { deflate: deflated });
  // Each record's bytes as stored in the file: [start, length].
  const where = records.map(([key, bytes]) => {
    const start = dataStart(file, key);
    return [start, deflated.includes(key) ? file.indexOf(Buffer.from("PK\x03\x04", "latin1"), start) - start : bytes.length];
  });
  const fresh = spyFresh(freshBuffers(), 0);
  const spy = spyBlob(file);
  const ckpt = await nodeApi(fresh).load(spy.blob);
  await sameAsBuffer(ckpt, file, "batches");
  for (const [k, i] of [[5, 0], [6, 1], [8, 2]]) assert.ok(Buffer.from(ckpt.storages[k].bytes).equals(noise[i]), `storage ${k}`);
  /** The one read of records `ks`, which starts at the first one's bytes. */
  const readOf = (...ks) => {
    const reads = ks.map((k) => readsOver(spy.reads, where[k][0], where[k][1]));
    for (const r of reads) assert.equal(r.length, 1, `records ${ks}: ${JSON.stringify(reads)}`);
    for (const r of reads) assert.deepEqual(r[0], reads[0][0], `records ${ks} are not one read: ${JSON.stringify(reads)}`);
    assert.equal(reads[0][0][0], where[ks[0]][0]);
    return reads[0][0];
  };
  const [a, b, c, d] = [readOf(0, 1), readOf(3), readOf(5, 6), readOf(8, 9)];
  // Every batch, of 2 MiB, 512 KiB, 1.25 MiB (deflated) or 1.4 MiB: one arrayBuffer() read, its
  // stored records views of it. The worker made the 4 MiB records' buffers alone, in order.
  assert.deepEqual([a[1], b[1], c[1] > MiB, d[1] > MiB], [where[1][0] + where[1][1] - where[0][0], 512 * 1024, true, true]);
  assert.deepEqual([a[2], b[2], c[2], d[2]], ["arrayBuffer", "arrayBuffer", "arrayBuffer", "arrayBuffer"]);
  assert.deepEqual(fresh.asked, [4 * MiB, 4 * MiB, 4 * MiB]);
  for (const k of [0, 1, 3, 9]) {
    assert.ok(spy.handed.has(ckpt.storages[k].bytes.buffer), `storage ${k} is not a view of its batch's read`);
  }
  // Where each lies in its batch's read (record 8, deflated, is inflated into a buffer of its own).
  assert.equal(ckpt.storages[0].bytes.buffer, ckpt.storages[1].bytes.buffer);
  for (const [k, first] of [[0, 0], [1, 0], [9, 8]]) {
    assert.equal(ckpt.storages[k].bytes.byteOffset, where[k][0] - where[first][0], `storage ${k}`);
  }
  for (const k of [2, 4, 7]) assert.ok(fresh.made.includes(ckpt.storages[k].bytes.buffer), `storage ${k}`);
  eachByteOnce(spy.reads, where, file.length);
});

test("Node: a part whose bytes have all come no longer counts among the 6 reads under way while its buffer is made", async () => {
  // 24 records of 4 MiB (a part each): with no buffer made, reads go on up to the 64 MiB read
  // ahead (16 of them), at most 6 under way at once.
  const sizes = [...Array(24).fill(4 * MiB), 128 * 1024, 4096];
  const { file, where } = checkpoint(sizes);
  const spy = spyBlob(file);
  const fresh = heldFresh();
  const loading = nodeApi(fresh).load(spy.blob);
  const begun = () => spy.reads.filter(([at]) => where.slice(0, 24).some(([start]) => start === at));
  const ended = () => spy.ended.filter(([at, how]) => how === "end" && where.slice(0, 24).some(([start]) => start === at));
  await settlesAt(fresh.asked, 24);
  const start = Date.now();
  while (ended().length < 16 && Date.now() - start < 10_000) await new Promise((resolve) => setTimeout(resolve, 10));
  await settlesAt(ended(), 16);
  assert.equal(begun().length, 16, "reads begun with no buffer made");
  for (const { make } of fresh.asked) make();
  const ckpt = await loading;
  // A read leaves the count once (when its bytes have come, not again when its buffer does).
  assert.ok(spy.maxPending <= 6, `${spy.maxPending} reads under way at once`);
  await sameAsBuffer(ckpt, file, "read ahead of their buffers");
  eachByteOnce(spy.reads, where, file.length);
});

/** A fresh-buffer maker that holds every buffer until the test makes it: `asked` lists
 * `{ size, make, seen }` in the order asked, `seen` what `onAsk` returned when it was asked. */
function heldFresh(onAsk = () => undefined) {
  const asked = [];
  return {
    asked,
    make: (size) => new Promise((resolve) => asked.push({ size, make: () => resolve(new ArrayBuffer(size)), seen: onAsk() })),
  };
}

/** Resolves once `list` has stayed `n` long for 100 ms; fails if it does not within 10 s. */
async function settlesAt(list, n) {
  const start = Date.now();
  let since = Date.now();
  let seen = -1;
  while (Date.now() - start < 10_000) {
    if (list.length !== seen) (seen = list.length), (since = Date.now());
    else if (Date.now() - since >= 100) break;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(list.length, n, `buffers asked for: ${list.length}, expected ${n}`);
}

test("Node: the worker is kept busy: the next buffer is asked for as one is made, not as one is placed, 256 MiB at most asked and not made", async () => {
  // 280 MiB in 20 MiB records (two parts each). The buffers are made in an order the records
  // cannot be placed in (the first one last).
  const sizes = [...Array(14).fill(20 * MiB), 128 * 1024, 4096];
  const { file } = checkpoint(sizes);
  const fresh = heldFresh();
  const loading = nodeApi(fresh).load(spyBlob(file).blob);
  // Nothing made: 12 x 20 MiB asked for (a 13th would pass 256 MiB; each counted once, not once
  // per part).
  await settlesAt(fresh.asked, 12);
  // The second made, the first still not (so nothing can be placed): one more asked for.
  fresh.asked[1].make();
  await settlesAt(fresh.asked, 13);
  fresh.asked[2].make();
  await settlesAt(fresh.asked, 14);
  for (let k = 3; k < 14; k++) fresh.asked[k].make();
  fresh.asked[0].make();
  const ckpt = await loading;
  await sameAsBuffer(ckpt, file, "kept busy");
  ckpt.storages.slice(0, 14).forEach((s, k) => assert.equal(s.bytes.buffer.byteLength, 20 * MiB, `storage ${k}`));
});

test("Node: a record over 256 MiB is asked for at once, alone, and the ones after it once it is made, before their reads", async () => {
  const sizes = [264 * MiB, 8 * MiB, 8 * MiB, 128 * 1024, 4096];
  const { file, where } = checkpoint(sizes);
  const spy = spyBlob(file);
  // When each buffer is asked for: the reads begun of the records after the big one.
  const fresh = heldFresh(() => spy.reads.filter(([start]) => start === where[1][0] || start === where[2][0]).length);
  const loading = nodeApi(fresh).load(spy.blob);
  await settlesAt(fresh.asked, 1);
  assert.equal(fresh.asked[0].size, 264 * MiB);
  fresh.asked[0].make();
  await settlesAt(fresh.asked, 3);
  // Asked for by the loop ahead, not by their reads (none of which had begun).
  assert.deepEqual(fresh.asked.map(({ size, seen }) => [size, seen]), [[264 * MiB, 0], [8 * MiB, 0], [8 * MiB, 0]]);
  fresh.asked[1].make();
  fresh.asked[2].make();
  await sameAsBuffer(await loading, file, "over 256 MiB");
});

test("Node: once a read fails, no more buffers are asked for", async () => {
  const sizes = [...Array(14).fill(20 * MiB), 128 * 1024, 4096];
  const { file, where } = checkpoint(sizes);
  const fresh = heldFresh();
  // The first record's second part fails at its first chunk.
  const failing = where[0][0] + 16 * MiB;
  const spy = spyBlob(file, {
    beforeChunk: (at, k) => (at === failing && k === 0 ? Promise.reject(new Error("the disk is gone")) : undefined),
  });
  const failed = assert.rejects(nodeApi(fresh).load(spy.blob), /could not read 4194304 bytes at offset \d+: the disk is gone/);
  await settlesAt(fresh.asked, 12);
  // Made after the failure: none asked for in their place.
  for (const { make } of fresh.asked) make();
  await failed;
  await settlesAt(fresh.asked, 12);
});

test("Node: a deflated record's read is not a fresh buffer, nor made ahead (it is dropped once inflated)", async () => {
  // Twenty stored 8 MiB records (well past the 64 MiB read ahead, within the 256 MiB asked for
  // ahead), then a deflated one of incompressible bytes (over 4 MiB as stored).
  const noise = randomBytes(6 * MiB);
  let pickle = new Pickle().op("}(");
  const records = [];
  for (let k = 0; k < 20; k++) {
    pickle = pickle.str(`s${k}`).tensor("FloatStorage", String(k), 2 * MiB, 0, [2 * MiB], [1]);
    records.push([String(k), new Uint8Array(8 * MiB).fill(k + 1)]);
  }
  pickle = pickle.str("d").tensor("FloatStorage", "20", 1.5 * MiB, 0, [1.5 * MiB], [1])
    .str("e").tensor("FloatStorage", "21", 32 * 1024, 0, [32 * 1024], [1]).op("u").stop();
  records.push(["20", noise], ["21", new Uint8Array(128 * 1024)]);
  const file = zipCheckpoint(pickle, records, { deflate: ["20"] });
  const fresh = spyFresh(freshBuffers(), 0);
  const spy = spyBlob(file);
  // When the deflated record's buffer is made: how many reads had begun.
  const allocated = [];
  const api = nodeApi(fresh, (n) => {
    allocated.push([n, spy.reads.length]);
    return new ArrayBuffer(n);
  });
  const ckpt = await api.load(spy.blob);
  await sameAsBuffer(ckpt, file, "deflated");
  assert.ok(Buffer.from(ckpt.storages[20].bytes).equals(noise));
  // The stored records' buffers were asked of the worker, the deflated one's not.
  assert.deepEqual(fresh.asked, Array(20).fill(8 * MiB));
  const deflated = allocated.filter(([n]) => n > 4 * MiB);
  assert.equal(deflated.length, 1, JSON.stringify(allocated));
  // Made with its first part, once every stored record's reads had begun (not 256 MiB ahead).
  const headerAt = file.indexOf(Buffer.from("archive/data/20")); // its local header
  const before = spy.reads.filter(([start]) => start < headerAt);
  assert.ok(deflated[0][1] >= before.length, `made after ${deflated[0][1]} reads; ${before.length} come before it`);
});

test("Node: a buffer the worker fails to make is made on the main thread instead", async () => {
  const { file, where } = checkpoint([5 * MiB, 20 * MiB, 128 * 1024, 4096]);
  const allocated = [];
  const api = nodeApi({ make: () => Promise.reject(new Error("no worker")) }, (n) => {
    allocated.push(n);
    return new ArrayBuffer(n);
  });
  const spy = spyBlob(file);
  const ckpt = await api.load(spy.blob);
  await sameAsBuffer(ckpt, file, "no worker");
  streamedInParts(spy, where, [0, 1]);
  for (const k of [0, 1]) assert.ok(allocated.includes(ckpt.storages[k].bytes.buffer.byteLength), `storage ${k}`);
});

test("Node: a part is read on while its buffer is being made, the chunks that come first copied in when it comes", async () => {
  const { file, where } = checkpoint([20 * MiB, 128 * 1024, 4096]);
  const [start, length] = where[0];
  const spy = spyBlob(file);
  const partsEnded = () => spy.ended.filter(([at, how]) => at >= start && at < start + length && how === "end").length;
  // The buffer comes once both parts' streams have ended; were the reads waiting for it, after
  // 10 s (a margin for a slow machine).
  let readFirst = null;
  const fresh = {
    make: (size) => new Promise((resolve) => {
      const asked = Date.now();
      const poll = setInterval(() => {
        if (partsEnded() < 2 && Date.now() - asked < 10_000) return;
        clearInterval(poll);
        readFirst = partsEnded() === 2;
        resolve(new ArrayBuffer(size));
      }, 5);
    }),
  };
  const ckpt = await nodeApi(fresh).load(spy.blob);
  assert.equal(readFirst, true, "the parts' reads waited for their buffer");
  await sameAsBuffer(ckpt, file, "read before the buffer came");
  streamedInParts(spy, where, [0]);
  assert.equal(ckpt.storages[0].bytes.buffer.byteLength, length);
});

test("Node: a buffer that comes while its part is being read gets the chunks that came before it", async () => {
  const { file, where } = checkpoint([20 * MiB, 128 * 1024, 4096]);
  const [start] = where[0];
  // The first part's stream stops before its 9th chunk until its buffer has come.
  let reachedNinth;
  const ninth = new Promise((resolve) => (reachedNinth = resolve));
  let bufferCame;
  const came = new Promise((resolve) => (bufferCame = resolve));
  const spy = spyBlob(file, {
    beforeChunk: (at, k) => {
      if (at !== start || k !== 8) return undefined;
      reachedNinth();
      return came.then(() => new Promise((resolve) => setTimeout(resolve, 10)));
    },
  });
  const fresh = {
    make: async (size) => {
      await ninth;
      bufferCame();
      return new ArrayBuffer(size);
    },
  };
  const ckpt = await nodeApi(fresh).load(spy.blob);
  await sameAsBuffer(ckpt, file, "the buffer came mid-part");
  streamedInParts(spy, where, [0]);
});

test("a part whose buffer cannot be made fails the load naming the file, its read cancelled", async () => {
  const { file, where } = checkpoint([20 * MiB, 128 * 1024, 4096]);
  const [start, length] = where[0];
  for (const [what, api] of [
    ["Node", nodeApi({ make: () => Promise.reject(new Error("no worker")) }, (n) => {
      if (n > 4 * MiB) throw new RangeError("Array buffer allocation failed");
      return new ArrayBuffer(n);
    })],
    ["browser", createApi(() => bindings, { alloc: (n) => {
      if (n > 4 * MiB) throw new RangeError("Array buffer allocation failed");
      return new ArrayBuffer(n);
    } })],
  ]) {
    const spy = spyBlob(file, { name: "big.pt" });
    await assert.rejects(api.load(spy.blob), (e) => {
      assert.match(e.message, /^big\.pt: could not read \d+ bytes at offset \d+: Array buffer allocation failed/, what);
      return true;
    });
    const streams = spy.reads.filter(([at, , how]) => at >= start && at < start + length && how === "stream");
    assert.ok(streams.length >= 1, `${what}: ${JSON.stringify(spy.reads)}`);
    for (const [at] of streams) {
      assert.deepEqual(spy.ended.filter(([e]) => e === at), [[at, "cancel"]], `${what}: the read at ${at}`);
    }
  }
});

test("reads overlap placement: up to 6 under way, the bytes read ahead bounded", async () => {
  // 104 MiB after the first record: when its read is slow, the reads after it stop short of 96 MiB.
  const sizes = [...Array(13).fill(8 * MiB), 24 * MiB, ...Array(40).fill(64 * 1024)];
  const { file, where } = checkpoint(sizes);
  const spy = spyBlob(file, { delayMs: 2, slowAt: where[0][0], slowMs: 300 });
  const ckpt = await ptload.load(spy.blob);
  assert.equal(ckpt.storages.length, sizes.length);
  // Six 8 MiB reads fit under the bound: all six are under way while the first is slow.
  assert.equal(spy.maxPending, 6, `${spy.maxPending} reads under way at once at most`);
  assert.ok(spy.maxPendingBytes < 96 * MiB, `${spy.maxPendingBytes} bytes under way at once`);
  assert.ok(spy.aheadOfSlow >= 8 * MiB, `${spy.aheadOfSlow} bytes read ahead of a slow read`);
  assert.ok(spy.aheadOfSlow < 96 * MiB, `${spy.aheadOfSlow} bytes read ahead of a slow read`);
  assert.equal(spy.pending, 0);
  eachByteOnce(spy.reads, where, file.length);
  ckpt.storages.forEach((s, k) => {
    assert.equal(s.bytes.length, sizes[k]);
    for (const i of [0, 1, sizes[k] - 1]) assert.equal(s.bytes[i], (k * 7 + i) & 255, `storage ${k} byte ${i}`);
  });
});

test("a cancelled load leaves no read under way", async () => {
  // 96 MiB: past the 64 MiB read ahead of placement (the reads of Node's parts go on while their
  // buffers are being made, so a smaller file may be all under way when placement begins).
  const { file } = checkpoint(Array(24).fill(4 * MiB));
  const spy = spyBlob(file, { delayMs: 5 });
  const controller = new AbortController();
  let placing = false;
  const load = ptload.load(spy.blob, {
    signal: controller.signal,
    onProgress: ({ loadedBytes }) => {
      // The first record's bytes: placement has begun.
      if (!placing && loadedBytes > 4 * MiB) {
        placing = true;
        controller.abort(new Error("stop"));
      }
    },
  });
  await assert.rejects(load, /stop/);
  assert.equal(spy.pending, 0, "a read outlived the load");
  const records = spy.reads.filter(([, n]) => n === 4 * MiB);
  assert.ok(records.length >= 2 && records.length <= 17, JSON.stringify(spy.reads));
});

test("the same bytes as load(buffer) from a Blob and a path: every fixture, misaligned ones too", async () => {
  const cases = allFixtures().map(([rel, want, path]) => [rel, optionsFor(rel, want), path]);
  // Stored records at odd offsets: all at 3 past a multiple of 64, and each at its own (then
  // some are odd within a batch too, and copied to be aligned).
  for (const [rel, misalign] of [["misaligned.pt", 3], ["skewed.pt", (k) => (k * 3) % 8]]) {
    const path = join(dir, rel);
    writeFileSync(path, checkpoint([4096, 12, 2 * MiB, 64, 1000, 8], { misalign }).file);
    cases.push([rel, {}, path]);
  }
  const seen = new Set(cases.map(([rel]) => rel));
  for (const rel of ["zip/big_endian.pt", "zip/deflated.pt", "zip/alignment4096.pt", "legacy/big_endian_host.pt", "tar/checkpoint.pt"]) {
    assert.ok(seen.has(rel), `${rel} is among the fixtures`);
  }
  for (const [rel, options, path] of cases) {
    const bytes = readFileSync(path);
    const spy = spyBlob(bytes);
    await sameAsBuffer(await ptload.load(spy.blob, options), bytes, `${rel} (Blob)`, options);
    await sameAsBuffer(await ptload.load(path, options), bytes, `${rel} (path)`, options);
  }
});

test("Node: a path is read by positioned reads into the storages, batched, on one handle closed at the end", async () => {
  const sizes = [...Array(200).fill(8192), 3 * MiB, 20 * MiB];
  const { file, where } = checkpoint(sizes);
  const path = join(dir, "batched.pt");
  writeFileSync(path, file);
  const handle = await fsp.open(path, "r");
  const proto = Object.getPrototypeOf(handle);
  await handle.close();
  const { read } = proto;
  const reads = [];
  let opened = 0;
  let closed = 0;
  proto.read = function (buffer, offset, length, position) {
    reads.push([position, length, buffer.byteLength]);
    return read.call(this, buffer, offset, length, position);
  };
  const realOpen = fsp.open;
  fsp.open = async (...args) => {
    opened++;
    const h = await realOpen(...args);
    const close = h.close; // an own property in Node 20, not the prototype's
    h.close = () => {
      closed++;
      return close.call(h);
    };
    return h;
  };
  try {
    const ckpt = await ptload.load(path);
    await sameAsBuffer(ckpt, file, "path");
    assert.deepEqual([opened, closed], [1, 1]);
    const recordReads = reads.filter(([s, n]) => where.some(([start, length]) => s < start + length && start < s + n));
    // One batch, one read, five parts, and the tail window (over the last record's end).
    assert.ok(recordReads.length <= 1 + 1 + 5 + 1, `${recordReads.length} reads of records: ${JSON.stringify(recordReads)}`);
    eachByteOnce(reads, where, file.length);
    // Into buffers of their own: the 3 MiB and 20 MiB storages are whole ArrayBuffers, the
    // latter read in five 4 MiB parts.
    const [bigAt, bigLength] = where[201];
    const parts = readsOver(reads, bigAt, bigLength).filter(([s, n]) => s >= bigAt && s + n <= bigAt + bigLength);
    assert.deepEqual(parts.map(([, n]) => n), Array(5).fill(4 * MiB), JSON.stringify(parts));
    for (const k of [200, 201]) {
      const s = ckpt.storages[k].bytes;
      assert.deepEqual([s.byteOffset, s.buffer.byteLength], [0, sizes[k]]);
    }
    // A failed load closes its file too.
    opened = closed = 0;
    await assert.rejects(ptload.load(path, { mapLocation: () => { throw new Error("no"); } }), /no/);
    assert.equal(opened, closed);
  } finally {
    proto.read = read;
    fsp.open = realOpen;
  }
});

test("a truncated or shrinking file fails naming the file", async () => {
  const { file } = checkpoint([MiB, 20 * MiB, 4096]);
  // Truncated before the load: the planner says what is wrong, naming the file.
  const cut = join(dir, "cut.pt");
  writeFileSync(cut, file.subarray(0, file.length >> 1));
  await assert.rejects(ptload.load(cut), (e) => {
    assert.ok(e instanceof ptload.PtloadError, String(e));
    assert.equal(e.file, cut);
    assert.ok(e.message.startsWith(`${cut}: `), e.message);
    return true;
  });
  await assert.rejects(ptload.load(new File([readFileSync(cut)], "cut.pt")), (e) => e.file === "cut.pt" && e.message.startsWith("cut.pt: "));
  // Shrinking while it loads: a read comes back short.
  const shrinking = join(dir, "shrinking.pt");
  writeFileSync(shrinking, file);
  let done = false;
  await assert.rejects(ptload.load(shrinking, {
    onProgress: () => {
      if (!done) truncateSync(shrinking, file.length - 5 * MiB);
      done = true;
    },
  }), (e) => {
    assert.ok(e instanceof ptload.PtloadError, String(e));
    assert.deepEqual([e.kind, e.file], ["Io", shrinking]);
    assert.match(e.message, new RegExp(`^${shrinking.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: read \\d+ bytes at offset \\d+, expected \\d+ \\(was the file changed\\?\\)$`));
    return true;
  });
  // Node's own Blob of a file that shrinks before it is read: its reads fail (NotReadableError).
  const opened = join(dir, "opened.pt");
  writeFileSync(opened, file);
  const blob = await openAsBlob(opened);
  truncateSync(opened, 1000);
  await assert.rejects(ptload.load(blob, { name: "opened.pt" }), (e) => {
    assert.ok(e instanceof ptload.PtloadError, String(e));
    assert.deepEqual([e.kind, e.file], ["Io", "opened.pt"]);
    assert.match(e.message, /^opened\.pt: could not read \d+ bytes at offset \d+: .+ \(was the file changed\?\)$/);
    return true;
  });
  // A Blob whose reads past a point come back short (parts of the 20 MiB record among them).
  for (const at of [MiB, 2 * MiB + 5, file.length - 100]) {
    const spy = spyBlob(file, { name: "model.pt", cut: at });
    await assert.rejects(ptload.load(spy.blob), (e) => {
      assert.ok(e instanceof ptload.PtloadError, String(e));
      assert.deepEqual([e.kind, e.file], ["Io", "model.pt"]);
      assert.match(e.message, /^model\.pt: read \d+ bytes at offset \d+, expected \d+ \(was the file changed\?\)$/);
      return true;
    });
    assert.equal(spy.pending, 0);
  }
});
