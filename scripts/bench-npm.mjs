#!/usr/bin/env node
// Load time of a checkpoint through the built npm package (pkg/) against reading the file.
//
// Usage: node --expose-gc scripts/bench-npm.mjs FILE [RUNS=7]     (after scripts/build-npm)
//
// Prints the median of RUNS runs (page cache warm) of:
//   read      fs.readFileSync(FILE)
//   load      load(buffer) on the bytes already read (zero-copy: the parse and the views)
//   read+load fs.readFileSync then load
//   blob      load(await fs.openAsBlob(FILE)) (read by slices; each record copied once)
// and how many bytes one load copies into wasm memory (the directory and the pickle).
// and the ratios to `read`. Every run checks that each tensor's data views the buffer.
import { openAsBlob, readFileSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const [file, runsArg] = process.argv.slice(2);
if (!file) {
  console.error("usage: node scripts/bench-npm.mjs FILE [RUNS]");
  process.exit(2);
}
const runs = Number(runsArg ?? 7);
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { load } = await import(join(root, "pkg", "index.mjs"));
// Count the bytes handed to wasm (the same module instance the package uses).
const { Planner } = createRequire(import.meta.url)(join(root, "pkg", "wasm", "ptload_wasm.cjs"));
let intoWasm = 0;
const insert = Planner.prototype.insert;
Planner.prototype.insert = function (offset, bytes) {
  intoWasm += bytes.length;
  return insert.call(this, offset, bytes);
};

const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const times = { read: [], load: [], "read+load": [], blob: [] };
let tensors = 0;
const gc = globalThis.gc ?? (() => {}); // between timings, so that no run pays for another's garbage
for (let i = 0; i < runs + 1; i++) {
  gc();
  let t0 = process.hrtime.bigint();
  const bytes = readFileSync(file);
  const read = ms(t0);
  intoWasm = 0;
  t0 = process.hrtime.bigint();
  const ckpt = await load(bytes);
  const loaded = ms(t0);
  const handed = intoWasm;
  tensors = ckpt.tensors().length;
  for (const [path, t] of ckpt.tensors()) {
    if (t.data.buffer !== bytes.buffer) throw new Error(`${path}: not a view of the buffer`);
  }
  gc();
  t0 = process.hrtime.bigint();
  const again = await load(readFileSync(file));
  const readLoad = ms(t0);
  gc();
  t0 = process.hrtime.bigint();
  const fromBlob = await load(await openAsBlob(file));
  const blob = ms(t0);
  if (fromBlob.tensors().length !== again.tensors().length) throw new Error("blob load differs");
  if (i === 0) {
    console.log(`bytes copied into wasm memory by one load: ${handed} (${((100 * handed) / bytes.length).toFixed(3)} % of the file)`);
    continue; // warm-up
  }
  times.read.push(read);
  times.load.push(loaded);
  times["read+load"].push(readLoad);
  times.blob.push(blob);
}
const size = statSync(file).size;
console.log(`${file}: ${(size / 1e6).toFixed(1)} MB, ${tensors} tensors; median of ${runs} runs (node ${process.version})`);
const base = median(times.read);
for (const [name, xs] of Object.entries(times)) {
  const m = median(xs);
  console.log(`${name.padEnd(10)} ${m.toFixed(2).padStart(9)} ms   ${(m / base).toFixed(3)} × read`);
}
