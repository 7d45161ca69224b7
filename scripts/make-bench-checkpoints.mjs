#!/usr/bin/env node
// Writes the checkpoints scripts/bench-npm.mjs is measured on, without torch: torch.save's zip
// layout (folder `archive/`, `data.pkl` first with a protocol-2 `{name: tensor}` dict, then
// `byteorder`, `data/<key>` records STORED with their data at multiples of 64 bytes (the `FB`
// padding field), `version`, the central directory), float32 storages of seeded pseudo-random
// bytes, CRC-32s filled in. Written record by record: memory stays at one record.
//
// Usage: node scripts/make-bench-checkpoints.mjs DIR [KIND...]
//   many   ~250 MB: 96 layers of a 1–4 MiB weight and a 4–64 KiB bias (192 records)
//   mixed  ~1 GB: two 64 MiB embeddings, 12 blocks of six 4–20 MiB weights and two 1–64 KiB norms
//   big    4 × 128 MiB storages (537 MB)
// (default: all three), as DIR/bench-KIND.pt; an existing file is kept.
import { closeSync, existsSync, mkdirSync, openSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import { crc32 } from "node:zlib";

const [dir, ...kinds] = process.argv.slice(2);
if (!dir) {
  console.error("usage: node scripts/make-bench-checkpoints.mjs DIR [many|mixed|big ...]");
  process.exit(2);
}

/** xorshift32, seeded: the same bytes every run. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** The tensors of a kind: [name, numel] (float32). */
function tensorsOf(kind) {
  const next = rng({ many: 1, mixed: 2, big: 3 }[kind]);
  const between = (lo, hi) => lo + (next() % (hi - lo + 1));
  const out = [];
  if (kind === "many") {
    for (let i = 0; i < 96; i++) {
      out.push([`layers.${i}.weight`, between(1 << 18, 1 << 20)]); // 1–4 MiB
      out.push([`layers.${i}.bias`, between(1 << 10, 1 << 14)]); // 4–64 KiB
    }
  } else if (kind === "mixed") {
    out.push(["embed.weight", 1 << 24], ["lm_head.weight", 1 << 24]); // 64 MiB each
    for (let i = 0; i < 12; i++) {
      for (const w of ["q", "k", "v", "o", "up", "down"]) out.push([`blocks.${i}.${w}.weight`, between(1 << 20, 5 << 20)]);
      for (const n of ["norm1", "norm2"]) out.push([`blocks.${i}.${n}.weight`, between(1 << 8, 1 << 14)]);
    }
  } else if (kind === "big") {
    for (let i = 0; i < 4; i++) out.push([`w${i}`, 1 << 25]); // 128 MiB each
  } else {
    throw new Error(`unknown kind ${kind} (many, mixed, big)`);
  }
  return out;
}

/** Protocol-2 pickle of `{name: _rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', n), 0, (n,), (1,), False, OrderedDict())}`. */
function pickleOf(tensors) {
  const b = [0x80, 2, 0x7d, 0x28]; // PROTO 2, EMPTY_DICT, MARK
  const op = (s) => {
    for (const c of typeof s === "string" ? Buffer.from(s, "latin1") : s) b.push(c);
  };
  const str = (s) => {
    const u = Buffer.from(s, "utf8");
    b.push(0x58, u.length & 0xff, (u.length >> 8) & 0xff, (u.length >> 16) & 0xff, u.length >>> 24);
    op(u);
  };
  const int = (v) => {
    const u = Buffer.alloc(4);
    u.writeInt32LE(v);
    b.push(0x4a);
    op(u);
  };
  tensors.forEach(([name, n], key) => {
    str(name);
    op("ctorch._utils\n_rebuild_tensor_v2\n(("); // GLOBAL, MARK, MARK
    str("storage");
    op("ctorch\nFloatStorage\n");
    str(String(key));
    str("cpu");
    int(n);
    op("tQ"); // TUPLE, BINPERSID
    int(0);
    op("(");
    int(n);
    op("t(");
    int(1);
    op("t");
    b.push(0x89); // NEWFALSE
    op("ccollections\nOrderedDict\n)R"); // EMPTY_TUPLE, REDUCE
    op("tR"); // TUPLE, REDUCE
  });
  op("u.");
  return Buffer.from(b);
}

function write(kind, path) {
  const tensors = tensorsOf(kind);
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, "w");
  let at = 0;
  const central = [];
  const put = (buf) => {
    for (let done = 0; done < buf.length;) done += writeSync(fd, buf, done, buf.length - done, at + done);
    at += buf.length;
  };
  const add = (name, data) => {
    const full = Buffer.from(`archive/${name}`);
    const start = at + 30 + full.length + 4;
    const pad = (64 - (start % 64)) % 64;
    const crc = crc32(data);
    const header = Buffer.alloc(30 + full.length + 4 + pad, 0x5a);
    header.writeUInt32LE(0x04034b50, 0);
    header.writeUInt16LE(20, 4);
    header.writeUInt32LE(0, 6); // flags, method 0 (stored)
    header.writeUInt32LE(0, 10); // time, date
    header.writeUInt32LE(crc, 14);
    header.writeUInt32LE(data.length, 18);
    header.writeUInt32LE(data.length, 22);
    header.writeUInt16LE(full.length, 26);
    header.writeUInt16LE(4 + pad, 28);
    full.copy(header, 30);
    header.writeUInt16LE(0x4246, 30 + full.length); // "FB"
    header.writeUInt16LE(pad, 32 + full.length);
    const offset = at;
    put(header);
    put(data);
    const c = Buffer.alloc(46 + full.length);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(data.length, 20);
    c.writeUInt32LE(data.length, 24);
    c.writeUInt16LE(full.length, 28);
    c.writeUInt32LE(offset, 42);
    full.copy(c, 46);
    central.push(c);
  };
  add("data.pkl", pickleOf(tensors));
  add("byteorder", Buffer.from("little"));
  const next = rng(7);
  tensors.forEach(([, n], key) => {
    const data = Buffer.allocUnsafe(n * 4);
    const words = new Uint32Array(data.buffer, data.byteOffset, n);
    for (let i = 0; i < n; i++) words[i] = next();
    add(`data/${key}`, data);
  });
  add("version", Buffer.from("3\n"));
  const cd = Buffer.concat(central);
  const cdAt = at;
  put(cd);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(central.length, 8);
  eocd.writeUInt16LE(central.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(cdAt, 16);
  put(eocd);
  closeSync(fd);
  if (at >= 2 ** 32) throw new Error(`${path}: over 4 GiB needs zip64, which this script does not write`);
  renameSync(tmp, path);
  return { tensors: tensors.length, bytes: at };
}

mkdirSync(dir, { recursive: true });
for (const kind of kinds.length ? kinds : ["many", "mixed", "big"]) {
  const path = join(dir, `bench-${kind}.pt`);
  if (existsSync(path)) {
    console.log(`${path}: exists`);
    continue;
  }
  const { tensors, bytes } = write(kind, path);
  console.log(`${path}: ${tensors} tensors, ${(bytes / 1e6).toFixed(1)} MB`);
}
