// Sparse checkpoints larger than 4 GiB for the Node tests, written by the test itself: a copy of
// a small torch zip whose entries are moved past a hole of `hole` bytes (a stored entry of
// zeros that takes no disk space), with zip64 records, as torch writes for big files. Also a
// Blob-like view of a file read by positioned reads (Node's fs.openAsBlob reports the size of a
// file over 4 GiB modulo 2^32, at least in Node 20).

import { closeSync, fstatSync, ftruncateSync, openSync, readSync, writeSync } from "node:fs";

function u16(v) {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
}
function u32(v) {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}
function u64(v) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

/** The entries of a small zip without zip64 records: [{ name, method, crc, csize, size, data }]. */
function entriesOf(zip) {
  const eocd = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  const count = zip.readUInt16LE(eocd + 10);
  let at = zip.readUInt32LE(eocd + 16);
  const out = [];
  for (let i = 0; i < count; i++) {
    const method = zip.readUInt16LE(at + 10);
    const crc = zip.readUInt32LE(at + 16);
    const csize = zip.readUInt32LE(at + 20);
    const size = zip.readUInt32LE(at + 24);
    const nameLen = zip.readUInt16LE(at + 28);
    const extraLen = zip.readUInt16LE(at + 30);
    const commentLen = zip.readUInt16LE(at + 32);
    const local = zip.readUInt32LE(at + 42);
    const name = zip.subarray(at + 46, at + 46 + nameLen).toString("utf8");
    const dataAt = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
    out.push({ name, method, crc, csize, size, data: zip.subarray(dataAt, dataAt + csize) });
    at += 46 + nameLen + extraLen + commentLen;
  }
  return out;
}

/** Writes `path`: `small`'s entries after a stored entry `<folder>/zzhole` of `hole` zero bytes
 * (a hole in the file), every offset and size in zip64 records. Returns the file's size. */
export function writeSparseZip64(small, path, hole) {
  const entries = entriesOf(small);
  const folder = entries[0].name.split("/")[0];
  const fd = openSync(path, "w");
  let at = 0;
  const central = [];
  const write = (buf) => {
    writeSync(fd, buf, 0, buf.length, at);
    at += buf.length;
  };
  const add = (name, method, crc, csize, size, data) => {
    const nameBytes = Buffer.from(name, "utf8");
    const offset = at;
    // Local header: sizes in a zip64 extra field (0xFFFFFFFF in the header).
    const extra = Buffer.concat([u16(1), u16(16), u64(size), u64(csize)]);
    write(Buffer.concat([
      u32(0x04034b50), u16(45), u16(0), u16(method), u16(0), u16(0), u32(crc),
      u32(0xffffffff), u32(0xffffffff), u16(nameBytes.length), u16(extra.length), nameBytes, extra,
    ]));
    if (data) write(data);
    else at += csize; // the hole
    const cextra = Buffer.concat([u16(1), u16(24), u64(size), u64(csize), u64(offset)]);
    central.push(Buffer.concat([
      u32(0x02014b50), u16(45), u16(45), u16(0), u16(method), u16(0), u16(0), u32(crc),
      u32(0xffffffff), u32(0xffffffff), u16(nameBytes.length), u16(cextra.length), u16(0), u16(0),
      u16(0), u32(0), u32(0xffffffff), nameBytes, cextra,
    ]));
  };
  add(`${folder}/zzhole`, 0, 0, hole, hole, null);
  for (const e of entries) add(e.name, e.method, e.crc, e.csize, e.size, e.data);
  const cdAt = at;
  const cd = Buffer.concat(central);
  write(cd);
  const eocd64At = at;
  const n = central.length;
  write(Buffer.concat([
    u32(0x06064b50), u64(44), u16(45), u16(45), u32(0), u32(0), u64(n), u64(n), u64(cd.length), u64(cdAt),
  ]));
  write(Buffer.concat([u32(0x07064b50), u32(0), u64(eocd64At), u32(1)]));
  write(Buffer.concat([
    u32(0x06054b50), u16(0), u16(0), u16(0xffff), u16(0xffff), u32(0xffffffff), u32(0xffffffff), u16(0),
  ]));
  ftruncateSync(fd, at);
  closeSync(fd);
  return at;
}

/** A Blob-like view of a file (slice + arrayBuffer by positioned reads), with its true size. */
export function fileBlob(path) {
  const size = (() => {
    const fd = openSync(path, "r");
    try {
      return fstatSync(fd).size;
    } finally {
      closeSync(fd);
    }
  })();
  const part = (start, end) => ({
    size: end - start,
    async arrayBuffer() {
      const out = Buffer.alloc(end - start);
      const fd = openSync(path, "r");
      try {
        let done = 0;
        while (done < out.length) {
          const n = readSync(fd, out, done, out.length - done, start + done);
          if (n === 0) break;
          done += n;
        }
      } finally {
        closeSync(fd);
      }
      return out.buffer.slice(out.byteOffset, out.byteOffset + out.length);
    },
  });
  return {
    size,
    type: "",
    name: path,
    slice: (start = 0, end = size) => part(start, Math.min(end, size)),
    arrayBuffer: () => Promise.reject(new Error("a file over 4 GiB is never read whole")),
  };
}
