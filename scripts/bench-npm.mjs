#!/usr/bin/env node
// Load time of a checkpoint through the built npm package (pkg/) against reading the file.
//
// Usage: node --expose-gc scripts/bench-npm.mjs FILE [RUNS=7]     (after scripts/build-npm)
// Env:   PTLOAD_PKG=DIR   measure the package built in DIR instead of pkg/ (before/after)
// Files: node scripts/make-bench-checkpoints.mjs DIR writes the ones README quotes.
//
// Prints the median of RUNS runs (page cache warm) of:
//   read        fs.readFileSync(FILE)
//   load        load(buffer) on the bytes already read (zero-copy: the parse and the views)
//   read+load   fs.readFileSync then load
//   blob        load(await fs.openAsBlob(FILE)) (read by slices; each record copied once)
//   path        load(FILE) (the file read with positioned reads into the storages' buffers)
//   blob-whole  (await fs.openAsBlob(FILE)).arrayBuffer(): Node's own Blob read of the whole
//               file, the floor under `blob` (no load through a Blob can read faster)
// with their ratios to `read`, and how many bytes one load copies into wasm memory (the
// directory and the pickle). Every run checks that each tensor's data views the buffer, and
// that the Blob and path loads give the same tensors.
import { openAsBlob, readFileSync, statSync } from "node:fs";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const [file, runsArg] = process.argv.slice(2);
if (!file) {
  console.error("usage: node --expose-gc scripts/bench-npm.mjs FILE [RUNS]");
  process.exit(2);
}
const runs = Number(runsArg ?? 7);
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = resolve(process.env.PTLOAD_PKG ?? join(root, "pkg"));
const { load } = await import(join(pkg, "index.mjs"));
// Count the bytes handed to wasm (the same module instance the package uses).
const { Planner } = createRequire(import.meta.url)(join(pkg, "wasm", "ptload_wasm.cjs"));
let intoWasm = 0;
const insert = Planner.prototype.insert;
Planner.prototype.insert = function (offset, bytes) {
  intoWasm += bytes.length;
  return insert.call(this, offset, bytes);
};

const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const times = { read: [], load: [], "read+load": [], blob: [], path: [], "blob-whole": [] };
let tensors = 0;
const gc = globalThis.gc ?? (() => {}); // between timings, so that no run pays for another's garbage
/** The first bytes of every tensor's data, to check that all loads agree. */
const fingerprint = (ckpt) => ckpt.tensors().map(([p, t]) => {
  const b = new Uint8Array(t.data.buffer, t.data.byteOffset, Math.min(t.data.byteLength, 64));
  return `${p}:${t.data.byteLength}:${b.join(",")}`;
}).join(";");
const timed = async (name, f) => {
  gc();
  const t0 = process.hrtime.bigint();
  const out = await f();
  times[name].push(ms(t0));
  return out;
};
for (let i = 0; i < runs + 1; i++) {
  const bytes = await timed("read", () => readFileSync(file));
  intoWasm = 0;
  const ckpt = await timed("load", () => load(bytes));
  const handed = intoWasm;
  tensors = ckpt.tensors().length;
  for (const [path, t] of ckpt.tensors()) {
    if (t.data.buffer !== bytes.buffer) throw new Error(`${path}: not a view of the buffer`);
  }
  const want = fingerprint(ckpt);
  const again = await timed("read+load", async () => load(readFileSync(file)));
  if (fingerprint(again) !== want) throw new Error("read+load differs");
  const fromBlob = await timed("blob", async () => load(await openAsBlob(file)));
  if (fingerprint(fromBlob) !== want) throw new Error("blob load differs");
  const fromPath = await timed("path", () => load(file));
  if (fingerprint(fromPath) !== want) throw new Error("path load differs");
  await timed("blob-whole", async () => (await openAsBlob(file)).arrayBuffer());
  if (i === 0) {
    for (const xs of Object.values(times)) xs.length = 0; // warm-up
    console.log(`bytes copied into wasm memory by one load: ${handed} (${((100 * handed) / bytes.length).toFixed(3)} % of the file)`);
  }
}
const size = statSync(file).size;
console.log(`${file}: ${(size / 1e6).toFixed(1)} MB, ${tensors} tensors; median of ${runs} runs (node ${process.version}, ${pkg})`);
const base = median(times.read);
for (const [name, xs] of Object.entries(times)) {
  const m = median(xs);
  console.log(`${name.padEnd(11)} ${m.toFixed(2).padStart(9)} ms   ${(m / base).toFixed(3)} × read`);
}
const ratio = (name) => (median(times[name]) / base).toFixed(2);
console.log(`blob/read ${ratio("blob")}   path/read ${ratio("path")}   blob-whole/read ${ratio("blob-whole")}`);
