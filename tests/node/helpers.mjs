// Shared by the Node tests of the npm package: where things are, torch's digests, and the
// comparison rules of tests/common/mod.rs `compare` (path order, dtype names, shape, stride,
// offset, flags, sha256 of the raw C-order little-endian bytes, storage_group sharing).

import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { deflateRawSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const PKG = join(ROOT, "pkg");
export const FIXTURES = join(ROOT, "tests", "fixtures");

if (!existsSync(join(PKG, "package.json"))) {
  throw new Error(`${PKG} is missing: run scripts/build-npm first`);
}

/** The package as Node `import` sees it (pkg/index.mjs). */
export const ptload = await import(join(PKG, "index.mjs"));

export function fixtureJson(name) {
  return JSON.parse(readFileSync(join(FIXTURES, name), "utf8"));
}

export function fixture(rel) {
  return readFileSync(join(FIXTURES, rel));
}

export function sha256(bytes) {
  return createHash("sha256").update(bytes).digest("hex");
}

/** The native CLI, when `cargo build` has made it (scripts/test does); else null. */
export function nativeCli() {
  for (const profile of ["debug", "release"]) {
    const exe = join(process.env.CARGO_TARGET_DIR ?? join(ROOT, "target"), profile, "ptload");
    if (existsSync(exe)) return exe;
  }
  return null;
}

/** ptload's options for a fixture, as tests/formats.rs `loader_for`. */
export function optionsFor(rel, want) {
  const options = { weightsOnly: !rel.startsWith("modules/") };
  if (want.encoding === "latin1" || want.encoding === "bytes") options.encoding = want.encoding;
  if (typeof want.map_location === "string") options.mapLocation = want.map_location;
  return options;
}

/** Compares a loaded checkpoint with torch's digests; returns the list of mismatches. */
export async function compare(ckpt, want, what) {
  if (want.compare === "by_path") return compareByPath(ckpt, want, what);
  const problems = [];
  if (want.format !== undefined && ckpt.format !== want.format) {
    problems.push(`${what}: format ${ckpt.format} != ${want.format}`);
  }
  if (want.byte_order !== undefined && ckpt.byteOrder !== want.byte_order) {
    problems.push(`${what}: byte order ${ckpt.byteOrder} != ${want.byte_order}`);
  }
  const got = ckpt.tensors();
  const expected = want.tensors;
  if (got.length !== expected.length) {
    problems.push(`${what}: ${got.length} tensors, torch has ${expected.length}: ours ${JSON.stringify(got.map(([p]) => p))}`);
    return problems;
  }
  const groups = new Map();
  for (let i = 0; i < got.length; i++) {
    const [path, t] = got[i];
    const w = expected[i];
    const at = `${what}: ${path}`;
    const check = (field, ours) => {
      if (JSON.stringify(ours) !== JSON.stringify(w[field])) {
        problems.push(`${at}: ${field} = ${JSON.stringify(ours)}, torch says ${JSON.stringify(w[field])}`);
      }
    };
    check("path", path);
    check("dtype", t.dtype);
    check("shape", t.shape);
    check("stride", t.stride);
    check("storage_offset", t.storageOffset);
    check("requires_grad", t.requiresGrad);
    check("conj", t.conj);
    check("neg", t.neg);
    try {
      check("sha256", sha256(await t.contiguousBytes()));
    } catch (e) {
      problems.push(`${at}: sha256 failed: ${e.message}`);
    }
    // Sharing: torch's storage groups must be ptload's storages.
    if (w.storage_group === null) {
      if (t.storage && t.storage.nbytes !== 0) problems.push(`${at}: torch has an empty storage, ours is not`);
    } else if (!t.storage) {
      problems.push(`${at}: no storage`);
    } else {
      const seen = groups.get(w.storage_group) ?? t.storage;
      groups.set(w.storage_group, seen);
      if (seen !== t.storage) problems.push(`${at}: storage group ${w.storage_group} maps to storages ${seen.key} and ${t.storage.key}`);
    }
  }
  if (new Set(groups.values()).size !== groups.size) {
    problems.push(`${what}: distinct torch storages share one ptload storage`);
  }
  return problems;
}

/** TorchScript: torch's digests are `state_dict()`'s; every entry must be among ours. */
async function compareByPath(ckpt, want, what) {
  const problems = [];
  if (ckpt.format !== want.format) problems.push(`${what}: format ${ckpt.format}`);
  const ours = new Map(ckpt.tensors());
  for (const w of want.tensors) {
    const t = ours.get(w.path);
    if (!t) {
      problems.push(`${what}: no tensor at ${w.path}; ours: ${[...ours.keys()]}`);
      continue;
    }
    const got = {
      dtype: t.dtype,
      shape: t.shape,
      stride: t.stride,
      storage_offset: t.storageOffset,
      sha256: sha256(await t.contiguousBytes()),
    };
    for (const [field, value] of Object.entries(got)) {
      if (JSON.stringify(value) !== JSON.stringify(w[field])) {
        problems.push(`${what}: ${w.path}: ${field} = ${JSON.stringify(value)}, torch says ${JSON.stringify(w[field])}`);
      }
    }
  }
  return problems;
}

/** Every fixture with torch's digests: [rel, want, path]. */
export function allFixtures() {
  const out = [];
  const expected = fixtureJson("expected.json");
  for (const [rel, want] of Object.entries(expected.files)) out.push([rel, want, join(FIXTURES, rel)]);
  for (const [rel, want] of Object.entries(expected.examples)) out.push([rel, want, join(ROOT, "examples", rel)]);
  for (const [rel, want] of Object.entries(fixtureJson("expected_formats.json").files)) {
    out.push([rel, want, join(FIXTURES, rel)]);
  }
  return out;
}

/** A Blob that records every slice read from it, and refuses to be read whole. */
export function countingBlob(bytes) {
  const blob = new Blob([bytes]);
  const reads = [];
  const wrap = (start, end) => ({
    async arrayBuffer() {
      reads.push([start, end - start]);
      return blob.slice(start, end).arrayBuffer();
    },
  });
  return {
    reads,
    blob: {
      size: blob.size,
      type: "",
      slice: (start = 0, end = blob.size) => wrap(start, Math.min(end, blob.size)),
      arrayBuffer: () => Promise.reject(new Error("read whole")),
    },
  };
}

/** A torch-like zip checkpoint (stored entries, data aligned to 64 bytes, folder `archive/`):
 * `data.pkl`, `data/<key>` for each record, `version` (tests/common/mod.rs `ZipBuilder`).
 * `misalign`: every entry's data starts that many bytes past a multiple of 64 instead (a
 * function: of the entry's index, data.pkl's being 0). `deflate`: the record keys whose entries
 * are deflated instead of stored (CRCs zero, as torch writes them). */
export function zipCheckpoint(pickle, records, { misalign = 0, deflate = [] } = {}) {
  const parts = [];
  const central = [];
  let offset = 0;
  let count = 0;
  const u16 = (v) => [v & 0xff, (v >> 8) & 0xff];
  const u32 = (v) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
  const add = (name, raw, deflated = false) => {
    const data = deflated ? deflateRawSync(raw) : raw;
    const method = deflated ? 8 : 0;
    const full = new TextEncoder().encode(`archive/${name}`);
    const start = offset + 30 + full.length + 4;
    const skew = typeof misalign === "function" ? misalign(count) : misalign;
    const pad = (64 + skew - (start % 64)) % 64;
    const header = [
      ...u32(0x04034b50), 0, 0, 0, 0, ...u16(method), 0, 0, 0, 0, ...new Array(12).fill(0),
      ...u16(full.length), ...u16(4 + pad), ...full, ...u16(0x4246), ...u16(pad), ...new Array(pad).fill(90),
    ];
    parts.push(Uint8Array.from(header), data);
    central.push(
      ...u32(0x02014b50), 0, 0, 0, 0, 0, 0, ...u16(method), 0, 0, 0, 0, ...u32(0),
      ...u32(data.length), ...u32(raw.length), ...u16(full.length), ...new Array(12).fill(0),
      ...u32(offset), ...full,
    );
    offset += header.length + data.length;
    count++;
  };
  add("data.pkl", pickle);
  for (const [key, data] of records) add(`data/${key}`, data, deflate.includes(key));
  add("version", new TextEncoder().encode("3\n"));
  const eocd = [
    ...u32(0x06054b50), 0, 0, 0, 0, ...u16(count), ...u16(count), ...u32(central.length), ...u32(offset), 0, 0,
  ];
  return Buffer.concat([...parts, Uint8Array.from(central), Uint8Array.from(eocd)]);
}

/** Protocol-2 pickle opcodes for hand-made files (tests/common/mod.rs `Pickle`). */
export class Pickle {
  constructor() {
    this.bytes = [0x80, 2];
  }
  op(text) {
    for (const c of typeof text === "string" ? Buffer.from(text, "latin1") : text) this.bytes.push(c);
    return this;
  }
  global(module, name) {
    return this.op(`c${module}\n${name}\n`);
  }
  str(s) {
    const b = Buffer.from(s, "utf8");
    this.bytes.push(0x58, b.length & 0xff, (b.length >> 8) & 0xff, (b.length >> 16) & 0xff, b.length >>> 24);
    return this.op(b);
  }
  int(v) {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.bytes.push(0x4a);
    return this.op(b);
  }
  ints(values) {
    this.op("(");
    for (const v of values) this.int(v);
    return this.op("t");
  }
  /** `_rebuild_tensor_v2(('storage', torch.<cls>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`. */
  tensor(cls, key, numel, offset, size, stride) {
    return this.global("torch._utils", "_rebuild_tensor_v2")
      .op("(").op("(").str("storage").global("torch", cls).str(key).str("cpu").int(numel).op("tQ")
      .int(offset).ints(size).ints(stride).op([0x89])
      .global("collections", "OrderedDict").op(")R").op("tR");
  }
  stop() {
    return Uint8Array.from([...this.bytes, 0x2e]);
  }
}
