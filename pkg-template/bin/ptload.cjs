#!/usr/bin/env node
// `ptload inspect [--json] [--sha256] [--map-location LOC]... [--no-weights-only] [--encoding NAME] FILE`:
// the native CLI's `inspect`, same output, through the npm package. The path goes to load(),
// which reads a file by positioned reads, so only the directory, the
// pickle and the tensor records are read, never the whole file at once; a distributed
// checkpoint's folder loads consolidated, as natively.
"use strict";
const crypto = require("node:crypto");
const { load } = require("../index.cjs");

const USAGE = "usage: ptload inspect [--json] [--sha256] [--map-location LOC]... [--no-weights-only] [--encoding NAME] FILE";
/** The load option that adds `root`'s JSON text, written by the native CLI's own writer. */
const ROOT_JSON = Symbol.for("ptload.rootJson");

function parse(argv) {
  const args = { json: false, sha256: false, mapLocation: [], weightsOnly: true, encoding: undefined, file: undefined };
  if (argv[0] !== "inspect") throw new Error(USAGE);
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--json") args.json = true;
    else if (a === "--sha256") args.sha256 = true;
    else if (a === "--no-weights-only") args.weightsOnly = false;
    else if (a === "--map-location" && i + 1 < argv.length) args.mapLocation.push(argv[++i]);
    else if (a.startsWith("--map-location=")) args.mapLocation.push(a.slice("--map-location=".length));
    else if (a === "--encoding" && i + 1 < argv.length) args.encoding = argv[++i];
    else if (a.startsWith("--encoding=")) args.encoding = a.slice("--encoding=".length);
    else if (a === "--tree" || a.startsWith("--max-items")) {
      throw new Error(`${a}: the text tree is in the native ptload CLI only; --json has the whole tree as "root"`);
    } else if (a.startsWith("-") || args.file !== undefined) throw new Error(`unexpected argument '${a}'\n${USAGE}`);
    else args.file = a;
  }
  if (args.file === undefined) throw new Error(USAGE);
  return args;
}

/** The mapLocation for the repeated --map-location values (as the native CLI). */
function mapLocation(values, file) {
  const pairs = values.filter((v) => v.includes("="));
  const plain = values.filter((v) => !v.includes("="));
  if (pairs.length === 0) {
    if (plain.length === 0) return undefined;
    if (plain.length === 1) return plain[0];
    throw new Error(`${file}: --map-location takes one device, or several FROM=TO mappings`);
  }
  if (plain.length > 0) throw new Error(`${file}: --map-location: a device and FROM=TO mappings cannot be mixed`);
  return Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
}

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${fixed1(value)} ${units[unit]}`;
}

/** One decimal, ties to even (as Rust's `{:.1}`; toFixed rounds ties up: 1.25 → "1.3"). */
function fixed1(v) {
  const t = v * 10;
  const f = Math.floor(t);
  if (t - f === 0.5) return ((f % 2 === 0 ? f : f + 1) / 10).toFixed(1);
  return v.toFixed(1);
}

async function sha256(t) {
  return crypto.createHash("sha256").update(await t.contiguousBytes()).digest("hex");
}

async function main() {
  const args = parse(process.argv.slice(2));
  const location = mapLocation(args.mapLocation, args.file);
  const options = { name: args.file, weightsOnly: args.weightsOnly, mapLocation: location, [ROOT_JSON]: args.json };
  if (args.encoding !== undefined) options.encoding = args.encoding;
  let ckpt;
  try {
    ckpt = await load(args.file, options);
  } catch (e) {
    // Bad option values (an unknown encoding) name the file, as the native CLI's do.
    if (e instanceof TypeError) throw new Error(`${args.file}: ${e.message.replace(/^ptload: /, "")}`);
    throw e;
  }
  let out;
  if (args.json) {
    const tensors = [];
    for (const [path, t] of ckpt.tensors()) {
      // Keys in the native CLI's (sorted) order, so that both print the same bytes.
      const entry = { device: t.device, dtype: t.dtype, path, requires_grad: t.requiresGrad };
      if (args.sha256) entry.sha256 = t.device === "meta" ? null : await sha256(t);
      Object.assign(entry, {
        shape: t.shape,
        storage: t.storage ? t.storage.key : null,
        storage_offset: t.storageOffset,
        stride: t.stride,
      });
      tensors.push(entry);
    }
    // `root` is JSON text of its own (the file's key order), spliced in as the native CLI does.
    const head = JSON.stringify({ byte_order: ckpt.byteOrder, format: ckpt.format });
    out = `${head.slice(0, -1)},"root":${ckpt[ROOT_JSON]},"tensors":${JSON.stringify(tensors)}}\n`;
  } else {
    const rows = [];
    let elements = 0;
    let bytes = 0;
    for (const [path, t] of ckpt.tensors()) {
      const n = t.numel * t.itemsize;
      elements += t.numel;
      bytes += n;
      const row = [path, t.dtype, `[${t.shape.join(", ")}]`, t.device, humanBytes(n)];
      if (args.sha256) row.push(t.device === "meta" ? "-" : await sha256(t));
      rows.push(row);
    }
    const header = ["path", "dtype", "shape", "device", "bytes"];
    if (args.sha256) header.push("sha256");
    const widths = header.map((h) => h.length);
    for (const row of rows) row.forEach((c, i) => (widths[i] = Math.max(widths[i], [...c].length)));
    const line = (cells) => cells.map((c, i) => c + " ".repeat(widths[i] - [...c].length)).join("  ").trimEnd() + "\n";
    const storageBytes = ckpt.storages.reduce((a, s) => a + s.nbytes, 0);
    out = `${args.file}: ${ckpt.format} format, ${ckpt.byteOrder}-endian, ${rows.length} tensors in ${ckpt.storages.length} storages (${humanBytes(storageBytes)})\n\n`;
    out += line(header);
    for (const row of rows) out += line(row);
    out += `\ntotal: ${rows.length} tensors, ${elements} elements, ${humanBytes(bytes)}\n`;
  }
  process.stdout.write(out);
}

main().catch((e) => {
  // One line on stderr, naming the file and the problem (as the native CLI).
  process.stderr.write(`ptload: ${String(e && e.message ? e.message : e).replace(/\n/g, " ")}\n`);
  process.exitCode = 1;
});
