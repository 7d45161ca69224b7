#!/usr/bin/env node
// Load time of a checkpoint through the built npm package (pkg/) against reading the file.
//
// Usage: node --expose-gc scripts/bench-npm.mjs FILE [RUNS=7] [--fresh | --processes N]
//        (after scripts/build-npm)
// Env:   PTLOAD_PKG=DIR   measure the package built in DIR instead of pkg/ (before/after)
// Files: node scripts/make-bench-checkpoints.mjs DIR writes the ones README quotes.
//
// Prints the median of RUNS runs (page cache warm) of each of these, its ratio to `read`, and
// the CPU time it took (user + system, every thread of the process: the main thread, libuv's
// pool, workers):
//   read         fs.readFileSync(FILE)
//   load         load(buffer) on the bytes already read (zero-copy: the parse and the views)
//   read+load    fs.readFileSync then load
//   blob         load(await fs.openAsBlob(FILE)) (read by slices; each record copied once)
//   path         load(FILE) (the file read with positioned reads into the storages' buffers)
//   blob-whole   (await fs.openAsBlob(FILE)).arrayBuffer(): Node's own Blob read of the whole
//                file into one buffer
//   blob-stream  the Blob read as `blob` reads it at best (slices of 16 MiB, six at once, by
//                stream()), every chunk dropped: what reading a Blob costs before one byte is
//                placed
//   touch        a new ArrayBuffer of the file's size made by the package's worker
//                (pkg/lib/fresh-buffers.cjs: its pages filled from /dev/zero, or touched; with
//                --fresh, the worker's start too): the page faults of the new memory every
//                storage a Blob load returns must be, as the package takes them
// and the floor under a Blob load on this machine: the CPU time of `blob-stream`, `touch` and
// `load` (the parse) spread over every core, against `read` (a Blob load does all three, and can
// take no less, however well it overlaps them).
// Every run checks that each tensor's data views the buffer, and that the Blob and path loads
// give the same tensors.
//
// --fresh: every measurement in a process of its own (as a command-line tool loads a checkpoint
// once), so that it pays for its memory's page faults, its worker's start and its code's
// compilation, as `read` does for its buffer.
//
// --processes N: only `blob` against `read` (issue 14's item 3), in N processes one after
// another: each times RUNS pairs of them in turns after a pair for warm-up, and gives the median
// of its pairs' ratios; then the median and range of those N ratios. On the 2-core VM this was
// written on, one process's ratio for the same build moved from 0.95 to 1.32 between processes,
// so one process says little about a change.
import { spawnSync } from "node:child_process";
import { openAsBlob, readFileSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const args = process.argv.slice(2);
const fresh = args.includes("--fresh");
const pairs = args.includes("--pairs");
/** The value after option `name`, and its index (-1 when absent). */
const valueOf = (name) => {
  const at = args.indexOf(name);
  return [at >= 0 ? args[at + 1] : null, at];
};
const [child, childIndex] = valueOf("--child");
const [processesArg, processesIndex] = valueOf("--processes");
const processes = processesArg === null ? 0 : Number(processesArg);
const [file, runsArg] = args.filter((a, i) => !a.startsWith("--") &&
  !(childIndex >= 0 && i === childIndex + 1) && !(processesIndex >= 0 && i === processesIndex + 1));
if (!file || !(Number.isInteger(processes) && processes >= 0)) {
  console.error("usage: node --expose-gc scripts/bench-npm.mjs FILE [RUNS] [--fresh | --processes N]");
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

/** What `blob` reads at best: its part size and reads in flight (pkg-template/src/api.mjs). */
const STREAM_PART_BYTES = 16 << 20;
const READS_IN_FLIGHT = 6;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const gc = globalThis.gc ?? (() => {}); // between timings, so that no run pays for another's garbage
/** The first bytes of every tensor's data, to check that all loads agree. */
const fingerprint = (ckpt) => ckpt.tensors().map(([p, t]) => {
  const b = new Uint8Array(t.data.buffer, t.data.byteOffset, Math.min(t.data.byteLength, 64));
  return `${p}:${t.data.byteLength}:${b.join(",")}`;
}).join(";");

async function blobStream() {
  const blob = await openAsBlob(file);
  let next = 0;
  let bytes = 0;
  const reader = async () => {
    while (next * STREAM_PART_BYTES < blob.size) {
      const at = next++ * STREAM_PART_BYTES;
      for await (const chunk of blob.slice(at, at + STREAM_PART_BYTES).stream()) bytes += chunk.length;
    }
  };
  await Promise.all(Array.from({ length: READS_IN_FLIGHT }, reader));
  if (bytes !== blob.size) throw new Error(`blob-stream read ${bytes} of ${blob.size} bytes`);
}

/** The package's own maker of fresh buffers (a worker of its own; not ended while the runs go on). */
const maker = createRequire(import.meta.url)(join(pkg, "lib", "fresh-buffers.cjs")).freshBuffers({ idleMs: 600_000 });

/** Each measurement: what it times, given the file's bytes already read (for `load`). Those
 * that load return the checkpoint (its fingerprint is compared). */
const measures = {
  read: async () => readFileSync(file),
  load: async (bytes) => load(bytes),
  "read+load": async () => load(readFileSync(file)),
  blob: async () => load(await openAsBlob(file)),
  path: async () => load(file),
  "blob-whole": async () => (await openAsBlob(file)).arrayBuffer(),
  "blob-stream": blobStream,
  touch: async () => new Uint8Array(await maker.make(statSync(file).size)),
};
const loads = new Set(["load", "read+load", "blob", "path"]);

/** One timing of `name`: `{ wall, cpu, fingerprint?, handed? }` (milliseconds). */
async function measure(name, bytes) {
  gc();
  intoWasm = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const out = await measures[name](bytes);
  const wall = Number(process.hrtime.bigint() - t0) / 1e6;
  const cpu = process.cpuUsage(cpu0);
  const got = { wall, cpu: (cpu.user + cpu.system) / 1e3 };
  if (loads.has(name)) {
    got.fingerprint = fingerprint(out);
    got.handed = intoWasm;
  }
  if (name === "load") {
    for (const [path, t] of out.tensors()) {
      if (t.data.buffer !== bytes.buffer) throw new Error(`${path}: not a view of the buffer`);
    }
  }
  return got;
}

if (child) {
  // One measurement in this fresh process (--fresh), reported to the parent as JSON.
  const bytes = child === "load" ? readFileSync(file) : null;
  process.stdout.write(JSON.stringify(await measure(child, bytes)));
  process.exit(0);
}

/** The JSON a fresh process of this script prints, given `extra` arguments. */
function inChildWith(extra, what) {
  const self = fileURLToPath(import.meta.url);
  const run = spawnSync(process.execPath, ["--expose-gc", self, file, ...extra],
    { env: process.env, encoding: "utf8", maxBuffer: 1 << 30 });
  if (run.status !== 0) throw new Error(`${what} in a fresh process failed:\n${run.stderr}`);
  return JSON.parse(run.stdout);
}

/** A fresh process's measurement of `name`. */
function inChild(name) {
  return inChildWith(["--child", name], name);
}

if (pairs) {
  // One process of --processes: RUNS pairs of `read` then `blob`, after one for warm-up.
  const ratios = [];
  let want = null;
  for (let i = 0; i < runs + 1; i++) {
    const read = await measure("read");
    const blob = await measure("blob");
    want ??= blob.fingerprint;
    if (blob.fingerprint !== want) throw new Error("blob: the tensors differ from the first load's");
    if (i > 0) ratios.push(blob.wall / read.wall);
  }
  process.stdout.write(JSON.stringify({ ratio: median(ratios) }));
  process.exit(0);
}

if (processes > 0) {
  const ratios = [];
  for (let p = 0; p < processes; p++) ratios.push(inChildWith([String(runs), "--pairs"], "--pairs").ratio);
  const sorted = [...ratios].sort((a, b) => a - b);
  console.log(`${file}: blob/read in ${processes} processes (each the median of ${runs} pairs, node ${process.version}, ${pkg}):`);
  console.log(`  ${ratios.map((r) => r.toFixed(2)).join(" ")}`);
  console.log(`  median ${median(ratios).toFixed(2)}, range ${sorted[0].toFixed(2)}–${sorted[sorted.length - 1].toFixed(2)}`);
  process.exit(0);
}

const times = Object.fromEntries(Object.keys(measures).map((name) => [name, []]));
const cpus = Object.fromEntries(Object.keys(measures).map((name) => [name, []]));
let want = null;
let handed = 0;
for (let i = 0; i < runs + 1; i++) {
  const bytes = fresh ? null : readFileSync(file);
  for (const name of Object.keys(measures)) {
    const got = fresh ? inChild(name) : await measure(name, bytes);
    times[name].push(got.wall);
    cpus[name].push(got.cpu);
    if (got.fingerprint !== undefined) {
      want ??= got.fingerprint;
      if (got.fingerprint !== want) throw new Error(`${name}: the tensors differ from the first load's`);
    }
    if (name === "load") handed = got.handed;
  }
  if (i === 0 && !fresh) {
    for (const xs of [...Object.values(times), ...Object.values(cpus)]) xs.length = 0; // warm-up
  }
}
const size = statSync(file).size;
const tensors = want.split(";").length;
console.log(`bytes copied into wasm memory by one load: ${handed} (${((100 * handed) / size).toFixed(3)} % of the file)`);
console.log(`${file}: ${(size / 1e6).toFixed(1)} MB, ${tensors} tensors; median of ${times.read.length} runs, ` +
  `${fresh ? "each in a fresh process" : "in one process"} (node ${process.version}, ${pkg})`);
const base = median(times.read);
for (const name of Object.keys(measures)) {
  const m = median(times[name]);
  console.log(`${name.padEnd(12)} ${m.toFixed(2).padStart(9)} ms   ${(m / base).toFixed(3)} × read   ` +
    `cpu ${median(cpus[name]).toFixed(0).padStart(6)} ms`);
}
const ratio = (name) => (median(times[name]) / base).toFixed(2);
console.log(`blob/read ${ratio("blob")}   path/read ${ratio("path")}   blob-whole/read ${ratio("blob-whole")}`);
const cores = availableParallelism();
const floor = (median(cpus["blob-stream"]) + median(cpus.touch) + median(cpus.load)) / cores;
console.log(`floor under a Blob load: (blob-stream + touch + load) cpu / ${cores} cores = ${floor.toFixed(0)} ms = ` +
  `${(floor / base).toFixed(2)} × read`);
