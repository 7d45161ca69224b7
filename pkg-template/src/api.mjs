// The JS half of ptload: input handling, the driver loop that feeds the wasm planner the byte
// ranges it asks for, and CPU placement (zero-copy TypedArray views, copies only when needed).
// Shared by every entry point: scripts/build-npm emits this file as ESM (browsers, bundlers,
// Node `import`) and as CommonJS (Node `require`), with its imports of sibling modules.

import { WebGpuPlacement, isGpuDevice, readBack } from "./webgpu.mjs";

/** The TypedArray for each dtype (complex dtypes: their real and imaginary halves alternate). */
const ARRAYS = {
  float64: Float64Array,
  float32: Float32Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  float8_e4m3fn: Uint8Array,
  float8_e5m2: Uint8Array,
  float8_e4m3fnuz: Uint8Array,
  float8_e5m2fnuz: Uint8Array,
  float8_e8m0fnu: Uint8Array,
  float4_e2m1fn_x2: Uint8Array,
  complex32: Uint16Array,
  bcomplex32: Uint16Array,
  complex64: Float32Array,
  complex128: Float64Array,
  int8: Int8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  uint8: Uint8Array,
  uint16: Uint16Array,
  uint32: Uint32Array,
  uint64: BigUint64Array,
  bool: Uint8Array,
  qint8: Int8Array,
  quint8: Uint8Array,
  qint32: Int32Array,
  quint4x2: Uint8Array,
  quint2x4: Uint8Array,
  bits8: Uint8Array,
  bits16: Uint16Array,
  bits1x8: Uint8Array,
  bits2x4: Uint8Array,
  bits4x2: Uint8Array,
};

/** The first bytes read (format sniffing) and the zip tail window (EOCD, zip64 records). */
const HEAD_BYTES = 262;
const TAIL_BYTES = 65557 + 22 + 76;
/** Reading a Blob (or a file: index.cjs opens a path as one) ahead of placement. Node's Blob
 * costs per read and its own reads are slow (Node 20 reads a file-backed Blob in 64 KiB pieces
 * joined on the main thread), so: records lying next to each other (BATCH_GAP bytes apart at
 * most: a zip local header) are read together, in reads of up to BATCH_BYTES, each record a view
 * of that read; a record of up to ONE_READ_BYTES is one read whose buffer becomes the storage's;
 * a bigger one is read in parts into its own buffer: a Blob's in STREAM_PART_BYTES parts whose
 * stream() chunks are copied into place as they come (PART_BYTES where it has no stream()), a
 * file's in PART_BYTES parts read straight into it. Up to READS_IN_FLIGHT reads are under way
 * while earlier records are placed, and at most AHEAD_BYTES are read (or being read) and not yet
 * placed. (Measured on Node 20 with scripts/bench-npm.mjs: a file-backed Blob is read fastest in
 * reads of a few MiB, several at once, since each read's pieces come one after another from one
 * thread of libuv's pool; 4 x 128 MiB records are read faster in 16 MiB streamed parts than in
 * 4 MiB ones, a file's faster in 4 MiB parts than in 16 MiB ones.)
 *
 * Where the host makes buffers with their pages touched off the main thread (`host.fresh`: Node,
 * a worker), copying into new memory on the main thread, which costs a page fault per page (on a
 * VM about as long as reading the file), is avoided; the worker takes those faults meanwhile:
 * - What goes into such buffers: a Blob's record of BATCH_BYTES or more (read in
 *   STREAM_PART_BYTES parts whose stream() chunks are copied in). Batches of smaller records are
 *   arrayBuffer() reads, as without a host's buffers (see the last figure below).
 * - The host makes them one after another, kept busy: up to FRESH_QUEUE_BYTES are asked for and
 *   not yet made. Those made are storages the load returns, so making them early holds no memory
 *   it would not hold anyway; a failed load leaves at most FRESH_QUEUE_BYTES made for nothing.
 * - A part's read does not wait for its buffer: the chunks that come first are kept and copied in
 *   when it comes (`readOne`). Once all of them have come, the read no longer counts among the
 *   READS_IN_FLIGHT, so that the next reads begin (what is kept stays within AHEAD_BYTES).
 * Measured (Node 20, this 2-core VM, `scripts/bench-npm.mjs --fresh`, a load in a fresh process,
 * against readFileSync):
 * - 4 x 128 MiB records: 2.0x without fresh buffers, 1.8x with, 1.6-1.8x with reads that go on
 *   meanwhile;
 * - 1.1 GB of 4-64 MiB records: 2.1x, 1.8x and 1.7x, and 1.6x once the host was kept busy rather
 *   than asked at most 256 MiB ahead of the records placed;
 * - 252 MB of 1-4 MiB records, batched: 1.95x with its batches arrayBuffer() reads, 1.87x
 *   streamed into fresh buffers with their finished reads not counted. But in a process that
 *   loads again (`bench-npm.mjs --processes 1`, 12 and then 10 processes of each build in turns,
 *   the median of their ratios), arrayBuffer() reads took 1.03x and 1.17x, fresh buffers 1.29x and
 *   1.31x. Likely because arrayBuffer() gets memory the process freed, its pages present, and
 *   spares the worker's round trip and the stream's promise per 64 KiB chunk. In fresh processes
 *   the fresh buffers were 6-9% faster (2.00x, 1.88x and 1.77x against 2.07x, 2.13x and 1.89x,
 *   10-12 rounds each). So batches are arrayBuffer() reads. */
const BATCH_GAP = 4096;
const BATCH_BYTES = 4 << 20;
const ONE_READ_BYTES = 16 << 20;
const PART_BYTES = 4 << 20;
const STREAM_PART_BYTES = 16 << 20;
const FRESH_QUEUE_BYTES = 256 << 20;
const READS_IN_FLIGHT = 6;
const AHEAD_BYTES = 64 << 20;
/** Reads made while planning that are kept for placement (the zip tail window, the pickle, a
 * legacy file read whole): the records inside them are not read again. */
const HOLD_BYTES = 4096;
/** Ranges the planner asks for at most this far apart are read together (`planReads`): the
 * local headers of records smaller than this, and those records with them. */
const PLAN_GAP = 4096;
/** Groups of runs asked of the wasm walker per call (contiguousBytes of a strided view). */
const GROUPS_PER_CALL = 1 << 12;
/** Bytes swapped per call into wasm (a multiple of every swap unit). */
const SWAP_CHUNK = 1 << 24;
/** A plan takes a handful of rounds; more means a bug, not a big file. */
const MAX_ROUNDS = 64;

/** An option key for the package's own CLI (bin/ptload.cjs): when true, the checkpoint gets
 * the JSON text of `ptload inspect --json`'s `root` under the same key, written by the native
 * CLI's writer. A symbol, so it is no public option and never an unknown one. */
export const ROOT_JSON = Symbol.for("ptload.rootJson");

/** Marks a host's file (index.cjs: a path): Blob-like (`size`, `slice`, `arrayBuffer`) and also
 * `readInto(target: Uint8Array, position) → Promise<bytes read>` (positioned reads straight into
 * the buffers the load allocates) and `close()` (called when the load ends). */
export const FILE_READER = Symbol.for("ptload.fileReader");

function typeError(message) {
  return new TypeError(`ptload: ${message}`);
}

/** Every failure to load a checkpoint (bad arguments are TypeErrors; what a mapLocation
 * function throws is rethrown as it is). `message` is the native loader's, word for word. */
export class PtloadError extends Error {
  constructor(message, { kind, file, offset } = {}) {
    super(message);
    this.name = "PtloadError";
    /** The native `ErrorKind` variant: "NotACheckpoint", "Zip", "Pickle", "WeightsOnly", … */
    this.kind = kind;
    /** The file the error is about (the input's name, `<memory>` when it has none). */
    this.file = file;
    /** The byte offset of the error, when known (see index.d.ts). */
    this.offset = offset;
  }
}

/** An error thrown by the wasm planner as a PtloadError (others pass through). */
function fromWasm(e) {
  const mark = e !== null && typeof e === "object" && !(e instanceof PtloadError) ? e.__ptload__ : undefined;
  return mark ? new PtloadError(e.message, mark) : e;
}

/** One storage of a loaded checkpoint. */
export class Storage {
  constructor(s) {
    /** Its key in the file. */
    this.key = s.key;
    /** Its dtype, as torch names it (uint8 for untyped storages). */
    this.dtype = s.dtype;
    /** Elements of `dtype`. */
    this.numel = s.numel;
    /** Bytes it holds. */
    this.nbytes = s.numel * s.itemsize;
    /** The device tag it was saved with (`cuda:0`, …). */
    this.location = s.location;
    /** Where it was placed: `cpu`, `webgpu` or `meta`. */
    this.device = s.device;
    /** Its bytes (host byte order) on `cpu`, else null. */
    this.bytes = null;
    /** Its GPUBuffer on `webgpu` (size padded to a multiple of 4 bytes), else null. */
    this.buffer = null;
    /** The GPUDevice holding `buffer`. */
    this.gpuDevice = null;
    /** Whether `bytes` is a view of the caller's buffer (no copy was made). */
    this.zeroCopy = false;
  }
}

/** A tensor: metadata and, on the CPU, a TypedArray view of its elements. */
export class Tensor {
  constructor(meta, storage, bindings) {
    this.dtype = meta.dtype;
    this.shape = meta.shape;
    this.stride = meta.stride;
    this.storageOffset = meta.storageOffset;
    this.requiresGrad = meta.requiresGrad;
    /** `tensor` or `parameter` (an `nn.Parameter`). */
    this.kind = meta.kind;
    /** torch's conjugate and negative bits (the data are stored without them applied). */
    this.conj = meta.conj;
    this.neg = meta.neg;
    if (meta.quantizer !== undefined) this.quantizer = meta.quantizer;
    if (meta.attributes !== undefined) this.attributes = meta.attributes;
    /** The storage it views (shared by every view of it), or null. */
    this.storage = storage;
    /** Bytes per element. */
    this.itemsize = meta.itemsize;
    /** On `cpu`: elements from the first one (storage offset applied) through the last one it
     * reaches, as its natural TypedArray. Element [i, j, …] is data[i*stride[0] + j*stride[1] + …]
     * (times 2 for complex dtypes, whose real and imaginary halves alternate).
     * On `webgpu`: `{ buffer: GPUBuffer, byteOffset }` (byteOffset = storageOffset × itemsize).
     * On `meta`: null. */
    this.data = null;
    // Layout, as the native rules decide it (src/torch/layout.rs): whether the view is
    // C-contiguous, the storage elements [first, end) it reaches, and the walk over its runs
    // when it is not.
    Object.defineProperty(this, "_layout", {
      value: { contiguous: meta.contiguous, span: meta.span, bindings },
    });
  }

  /** `cpu`, `webgpu` or `meta`. */
  get device() {
    return this.storage ? this.storage.device : "meta";
  }

  /** Number of elements. */
  get numel() {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Whether the elements lie in C order without gaps. */
  get isContiguous() {
    return this._layout.contiguous;
  }

  /** The elements in C-contiguous order, little-endian, as bytes (`bool` as one byte 0/1).
   * For a contiguous tensor this is a view of the same memory as `data`, not a copy. */
  async contiguousBytes() {
    const storage = this.storage;
    const [first, end] = this._layout.span;
    let bytes;
    let at;
    if (storage && storage.buffer) {
      // Read back the span the view reaches, then walk it on the host.
      bytes = await readBack(storage.gpuDevice, storage.buffer, first * this.itemsize, (end - first) * this.itemsize);
      at = 0;
    } else {
      bytes = storage && storage.bytes;
      if (!bytes) {
        throw new Error(`the tensor is on the ${this.device} device: it has no data in host memory`);
      }
      at = first * this.itemsize;
    }
    const total = this.numel * this.itemsize;
    if (this._layout.contiguous) return bytes.subarray(at, at + total);
    // The native walk, with offsets from the view's first element.
    const { RunWalker } = this._layout.bindings;
    const walker = new RunWalker(this.dtype, this.shape, this.stride, 0);
    try {
      const out = new Uint8Array(total);
      const run = walker.runBytes;
      let pos = 0;
      // Groups of evenly spaced runs: [first byte, runs, step in bytes, ...].
      for (let groups = walker.next(GROUPS_PER_CALL); groups.length > 0; groups = walker.next(GROUPS_PER_CALL)) {
        for (let g = 0; g < groups.length; g += 3) {
          const count = groups[g + 1];
          const step = groups[g + 2];
          for (let k = 0, from = at + groups[g]; k < count; k++, from += step) {
            out.set(bytes.subarray(from, from + run), pos);
            pos += run;
          }
        }
      }
      return out;
    } finally {
      walker.free();
    }
  }
}

/** A loaded checkpoint. */
export class Checkpoint {
  constructor(plan, storages, tensors) {
    /** "zip" | "legacy" | "tar" | "torchscript" */
    this.format = plan.format;
    /** The byte order of the file's tensor data: "little" | "big" (loaded data are in host order). */
    this.byteOrder = plan.byteOrder;
    /** What torch.load would have returned, as plain JS values. */
    this.root = plan.root;
    /** TorchScript only: the tuple of `constants.pkl`. */
    if (plan.constants !== undefined) this.constants = plan.constants;
    /** Storages in order of first reference. */
    this.storages = storages;
    this._tensors = tensors;
    this._byPath = null;
  }

  /** Every tensor as [path, Tensor], in file order (paths `.`-joined, as torch's state_dict keys). */
  tensors() {
    return this._tensors.slice();
  }

  /** The tensor at `path`, or undefined. */
  tensor(path) {
    if (!this._byPath) this._byPath = new Map(this._tensors);
    return this._byPath.get(path);
  }
}

// ---- inputs -------------------------------------------------------------------------------

/** A source of bytes: the caller's buffer (views, no copy) or a Blob (read by slices). */
class BufferSource {
  constructor(bytes, name, callerOwned) {
    this.bytes = bytes;
    this.size = bytes.byteLength;
    this.name = name;
    this.callerOwned = callerOwned;
  }
  async read(offset, length) {
    return { bytes: this.bytes.subarray(offset, offset + length), fresh: false };
  }
}

/** A Blob, or a host's file (`FILE_READER`: read straight into buffers the load allocates).
 * Reads are fresh buffers, except those kept from planning (`held`), which are shared. */
class BlobSource {
  constructor(blob, name, alloc, fresh) {
    this.blob = blob;
    this.size = blob.size;
    this.name = name;
    this.callerOwned = false;
    this.file = blob[FILE_READER] === true ? blob : null;
    /** The host's maker of buffers whose pages are touched off the main thread (a Blob's only: a
     * file is read straight into its buffers, off the main thread already). */
    this.fresh = this.file ? null : fresh ?? null;
    /** Bytes per part of a record read in parts, and the size from which a read goes into a
     * buffer of its own (`buffer`: made by the host, or here) rather than being one read. */
    this.part = !this.file && typeof blob.stream === "function" ? STREAM_PART_BYTES : PART_BYTES;
    this.partsFrom = this.fresh ? BATCH_BYTES : ONE_READ_BYTES + 1;
    /** A new ArrayBuffer of n bytes (the host's: Node's need not be zeroed, every byte is read). */
    this.alloc = alloc ?? ((n) => new ArrayBuffer(n));
    /** Reads kept while `holding` (planning): `[offset, bytes]`, sorted by offset. */
    this.held = [];
    this.holding = true;
  }

  /** Bytes [offset, offset + length) if a kept read holds them all, else null. Only reads that
   * lie in their buffer at the file's alignment (mod 64) serve, so that the views keep it. The
   * read asked is the last to start at or before `offset`, found by bisection (placement asks
   * once per record, and a file of many small records has many kept reads). Kept reads do not
   * overlap (planning reads are disjoint, and one a kept read holds is served by it); were one
   * to, a miss would only cost a read. */
  heldBytes(offset, length) {
    const held = this.held;
    let lo = 0;
    let hi = held.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (held[mid][0] <= offset) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) return null;
    const [at, bytes] = held[lo - 1];
    if ((at - bytes.byteOffset) % 64 === 0 && offset + length <= at + bytes.length) {
      return bytes.subarray(offset - at, offset - at + length);
    }
    return null;
  }

  /** Keeps a read, in offset order. */
  keep(offset, bytes) {
    let at = this.held.length;
    while (at > 0 && this.held[at - 1][0] > offset) at--;
    this.held.splice(at, 0, [offset, bytes]);
  }

  async read(offset, length) {
    const held = this.heldBytes(offset, length);
    if (held) return { bytes: held, fresh: false };
    const keep = this.holding && length >= HOLD_BYTES;
    // A kept read from anywhere but a multiple of 64 goes into its buffer at the file's
    // alignment, so that the records in it can be views (heldBytes).
    const skew = offset % 64;
    const bytes = keep && skew !== 0 && length <= ONE_READ_BYTES
      ? await this.readOne(offset, length, new Uint8Array(this.alloc(length + skew), skew, length))
      : await this.fetch(offset, length);
    if (keep) this.keep(offset, bytes);
    return { bytes, fresh: true };
  }

  /** A fresh buffer of [offset, offset + length): one read, or parts read into one buffer. */
  async fetch(offset, length) {
    if (length < this.partsFrom) return this.readOne(offset, length);
    const into = { size: length, bytes: null };
    const reads = [];
    for (let at = 0; at < length; at += this.part) {
      reads.push({ offset: offset + at, length: Math.min(this.part, length - at), into, at });
    }
    const ahead = new ReadAhead(this, reads);
    try {
      for (let k = 0; k < reads.length; k++) await ahead.take();
    } finally {
      await ahead.close();
    }
    return into.bytes;
  }

  /** The buffer (a Uint8Array) that the parts of `into` (`{ size, transient }`) are read into,
   * made on the first call: the host's fresh buffer where it makes them (or, should that fail, a
   * new one), but for a transient one (read to be inflated, then dropped). */
  buffer(into) {
    into.ready ??= (this.fresh && !into.transient
      ? this.fresh.make(into.size).catch(() => this.alloc(into.size))
      : new Promise((resolve) => resolve(this.alloc(into.size)))
    ).then((b) => (into.bytes = new Uint8Array(b)));
    // Failing, it fails the part that awaits it (the first may still be reading).
    into.ready.catch(() => {});
    return into.ready;
  }

  /** Reads [offset, offset + length) into the buffer of `into` at `at`, and gives those bytes.
   * The read starts at once and goes on while the host is still making the buffer (`readOne`). */
  readPart(offset, length, into, at, doneReading) {
    const target = this.buffer(into).then((b) => b.subarray(at, at + length));
    target.catch(() => {}); // a failed read may not await it
    return this.readOne(offset, length, target, doneReading);
  }

  /** One read of [offset, offset + length) into `target` (a Uint8Array of that length, or a
   * promise of one) or, without one, into a fresh buffer: a Blob's slice (its ArrayBuffer, as it
   * is) or the host file's. A Blob's chunks that come before a promised target are kept and
   * copied in when it comes, so that the read does not stall behind the worker making it (at
   * most the read's own bytes are kept, and the reads under way are bounded by AHEAD_BYTES);
   * should the target fail, the read is cancelled at its next chunk. `doneReading()` is called
   * once every chunk has come, if the target has not. */
  async readOne(offset, length, target, doneReading) {
    if (this.file) {
      const got = target ? await target : new Uint8Array(this.alloc(length));
      const n = length === 0 ? 0 : await this.file.readInto(got, offset);
      if (n !== length) throw this.shortRead(offset, length, n);
      return got;
    }
    let n;
    let got;
    try {
      const slice = this.blob.slice(offset, offset + length);
      if (target && typeof slice.stream === "function") {
        // Into a buffer: the slice's chunks copied as they come (arrayBuffer() would join them
        // into one more buffer first, a second copy of every byte).
        got = target instanceof Uint8Array ? target : null;
        n = 0;
        /** `{ bytes }` or `{ failed: true, error }` once the promised target came or failed. */
        let came = null;
        if (got === null) target.then((bytes) => (came = { bytes }), (error) => (came = { failed: true, error }));
        const early = [];
        const reader = slice.stream().getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (n + value.length > length || came?.failed) {
            await reader.cancel().catch(() => {});
            if (came?.failed) throw came.error;
            throw this.shortRead(offset, length, n + value.length);
          }
          if (got === null && came !== null) got = copyIn(came.bytes, early);
          if (got !== null) got.set(value, n);
          else early.push([value, n]);
          n += value.length;
        }
        if (got === null) {
          doneReading?.();
          got = copyIn(await target, early);
        }
      } else {
        got = new Uint8Array(await slice.arrayBuffer());
        n = got.length;
        if (target && n === length) {
          const into = await target;
          into.set(got);
          got = into;
        }
      }
    } catch (e) {
      if (e instanceof PtloadError) throw e;
      // Node's Blob of a file that changed: "NotReadableError: The blob could not be read".
      throw new PtloadError(`${this.name}: could not read ${length} bytes at offset ${offset}: ${e.message} ` +
        "(was the file changed?)", { kind: "Io", file: this.name, offset });
    }
    if (n !== length) throw this.shortRead(offset, length, n);
    return got;
  }

  shortRead(offset, length, n) {
    return new PtloadError(`${this.name}: read ${n} bytes at offset ${offset}, expected ${length} (was the file changed?)`,
      { kind: "Io", file: this.name, offset });
  }

  async close() {
    if (this.file) await this.file.close();
  }
}

/** Copies the chunks `early` ([bytes, at]) into `into` at their places, and gives `into`. */
function copyIn(into, early) {
  for (const [bytes, at] of early) into.set(bytes, at);
  early.length = 0;
  return into;
}

/** Reads issued in order ahead of their use: up to READS_IN_FLIGHT under way (reading: a part
 * whose bytes have all come, kept until its buffer is made, no longer counts), at most
 * AHEAD_BYTES issued and not yet taken. `take()` gives each read's bytes in order. A read is
 * `{ offset, length }`; or `{ ..., into: { size, bytes }, at }`, a part of a buffer of `size`
 * bytes (`source.buffer`), made when its first part starts, or, a host's fresh one, asked for in
 * order with at most FRESH_QUEUE_BYTES asked for and not yet made (`askFresh`); or `{ bytes }`,
 * already at hand. */
class ReadAhead {
  constructor(source, reads) {
    this.source = source;
    this.reads = reads;
    this.pending = [];
    this.issued = 0;
    this.taken = 0;
    this.running = 0;
    this.ahead = 0;
    /** Reads looked at by `askFresh`, and the bytes of the buffers it asked for not yet made. */
    this.asked = 0;
    this.queued = 0;
    this.stopped = false;
    this.askFresh();
    this.issue();
  }

  /** Asks the host for the fresh buffers of the reads to come, in their order, so that it is
   * never idle while some are left: up to FRESH_QUEUE_BYTES asked for and not yet made (one at
   * least), the next asked for as each is made. A transient buffer (read to be inflated, then
   * dropped) is made with its first part instead; one whose part was issued first was asked for
   * by that part. */
  askFresh() {
    while (this.source.fresh && !this.stopped && this.asked < this.reads.length) {
      const into = this.reads[this.asked].into;
      if (into && !into.transient && into.ready === undefined) {
        if (this.queued > 0 && this.queued + into.size > FRESH_QUEUE_BYTES) return;
        this.queued += into.size;
        const made = () => {
          this.queued -= into.size;
          this.askFresh();
        };
        this.source.buffer(into).then(made, made);
      }
      this.asked++;
    }
  }

  issue() {
    while (!this.stopped && this.issued < this.reads.length && this.running < READS_IN_FLIGHT &&
           (this.ahead === 0 || this.ahead + this.reads[this.issued].length <= AHEAD_BYTES)) {
      const k = this.issued++;
      const r = this.reads[k];
      let got;
      if (r.bytes) {
        got = Promise.resolve(r.bytes);
      } else {
        this.running++;
        let reading = true;
        const doneReading = () => {
          if (!reading) return;
          reading = false;
          this.running--;
          this.issue();
        };
        got = (r.into
          ? this.source.readPart(r.offset, r.length, r.into, r.at, doneReading)
          : this.source.readOne(r.offset, r.length)
        ).finally(doneReading);
      }
      this.ahead += r.length;
      // A failed read stops the others; its error is thrown by take().
      got.catch(() => (this.stopped = true));
      this.pending[k] = got;
    }
  }

  /** The next read's bytes. */
  async take() {
    const k = this.taken++;
    try {
      return await this.pending[k];
    } finally {
      this.pending[k] = undefined;
      this.ahead -= this.reads[k].length;
      this.issue();
    }
  }

  /** Issues no more reads, and waits for those under way (none outlives the load). */
  async close() {
    this.stopped = true;
    await Promise.allSettled(this.pending);
  }
}

function isBlob(x) {
  return typeof x === "object" && x !== null && typeof x.slice === "function" &&
    typeof x.arrayBuffer === "function" && typeof x.size === "number";
}

function isResponse(x) {
  return typeof x === "object" && x !== null && typeof x.arrayBuffer === "function" &&
    "headers" in x && "body" in x && typeof x.status === "number";
}

/** A Response's size from its headers, when they tell it (undefined while unknown). */
function responseSize(response) {
  const encoded = response.headers.get("content-encoding");
  const declared = Number(response.headers.get("content-length"));
  return !encoded && Number.isSafeInteger(declared) && declared >= 0 && response.headers.has("content-length")
    ? declared
    : undefined;
}

async function readResponse(response, progress, file) {
  if (!response.ok) {
    throw new PtloadError(`${file}: HTTP status ${response.status}`, { kind: "Io", file });
  }
  if (response.bodyUsed) throw typeError("the Response body was already read");
  const known = responseSize(response);
  progress.total = known;
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  let buffer = new Uint8Array(known ?? 1 << 16);
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (length + value.length > buffer.length) {
      const grown = new Uint8Array(Math.max(buffer.length * 2, length + value.length));
      grown.set(buffer.subarray(0, length));
      buffer = grown;
    }
    buffer.set(value, length);
    length += value.length;
    progress.add(value.length);
  }
  return length === buffer.length ? buffer : buffer.subarray(0, length);
}

function isUrl(x) {
  return typeof URL !== "undefined" && x instanceof URL;
}

/** The input to read: a string or URL goes through the host's `open` (Node: the file as a
 * Blob; browsers: fetch), anything else is read as it is. */
async function openInput(input, name, progress, host) {
  if (typeof input === "string" || isUrl(input)) {
    if (!host.open) throw typeError("load() takes no path or URL here");
    const opened = await host.open(input);
    return openInput(opened.input, name ?? opened.name, progress, { alloc: host.alloc, fresh: host.fresh });
  }
  if (input instanceof ArrayBuffer ||
      (typeof SharedArrayBuffer !== "undefined" && input instanceof SharedArrayBuffer)) {
    return new BufferSource(new Uint8Array(input), name ?? "<memory>", true);
  }
  if (ArrayBuffer.isView(input)) {
    const bytes = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    return new BufferSource(bytes, name ?? "<memory>", true);
  }
  if (isResponse(input)) {
    const file = name ?? (input.url || "<memory>");
    if (input.body && typeof input.body.getReader === "function" && input.ok && !input.bodyUsed) {
      return new StreamSource(input, file, responseSize(input));
    }
    const bytes = await readResponse(input, progress, file);
    return new BufferSource(bytes, file, false);
  }
  if (isBlob(input)) {
    const fileName = typeof input.name === "string" && input.name ? input.name : undefined;
    return new BlobSource(input, name ?? fileName ?? "<memory>", host.alloc, host.fresh);
  }
  if (isFolder(input)) return new FolderSource(input, name ?? "<memory>");
  throw typeError("load() takes a Uint8Array, an ArrayBuffer, a Blob or File, a fetch Response, a path, a URL, " +
    "or a distributed checkpoint's files as a Map or object of name → bytes");
}

/** A Map, or a plain object, of file name → Blob / File / bytes: a folder's files. */
function isFolder(x) {
  if (x instanceof Map) return true;
  if (typeof x !== "object" || x === null) return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

/** The files of a folder (a distributed checkpoint: `.metadata` and its `.distcp` files). */
class FolderSource {
  constructor(files, name) {
    this.files = files instanceof Map ? [...files] : Object.entries(files);
    this.name = name;
    for (const [file, content] of this.files) {
      if (typeof file !== "string" || !(isBlob(content) || ArrayBuffer.isView(content) || content instanceof ArrayBuffer)) {
        throw typeError(`a folder's files must be named Blobs, Files or bytes ('${String(file)}' is not)`);
      }
    }
    this.size = this.files.reduce((n, [, c]) => n + (isBlob(c) ? c.size : c.byteLength), 0);
  }
  /** Closes the host's files (FILE_READER) it was given. */
  async close() {
    for (const [, content] of this.files) if (content[FILE_READER] === true) await content.close();
  }

  /** Every file's bytes, read whole. */
  async readAll(progress) {
    const names = [];
    const contents = [];
    for (const [file, content] of this.files) {
      let bytes;
      if (isBlob(content)) bytes = new Uint8Array(await content.arrayBuffer());
      else if (content instanceof ArrayBuffer) bytes = new Uint8Array(content);
      else bytes = new Uint8Array(content.buffer, content.byteOffset, content.byteLength);
      names.push(file);
      contents.push(bytes);
      progress.add(bytes.length);
    }
    return { names, contents };
  }
}

// ---- options ------------------------------------------------------------------------------

/** The options `load` takes (index.d.ts `LoadOptions`). */
const OPTIONS = ["mapLocation", "weightsOnly", "device", "dtype", "signal", "encoding", "onProgress", "name"];

function normalizeOptions(options) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== "object") throw typeError("options must be an object");
  for (const key of Object.keys(options)) {
    if (!OPTIONS.includes(key)) {
      throw typeError(`unknown option '${key}' (load takes ${OPTIONS.join(", ")})`);
    }
  }
  const { mapLocation, weightsOnly, onProgress, encoding, name, device, dtype, signal } = options;
  if (device !== undefined && !isGpuDevice(device)) throw typeError("device must be a GPUDevice");
  if (dtype !== undefined && dtype !== "float16" && dtype !== "float32") {
    throw typeError('dtype must be "float16" or "float32"');
  }
  if (dtype !== undefined && device === undefined) throw typeError("dtype converts on the GPU: it needs a device");
  if (signal !== undefined && !(typeof signal === "object" && signal !== null && typeof signal.aborted === "boolean")) {
    throw typeError("signal must be an AbortSignal");
  }
  if (weightsOnly !== undefined && typeof weightsOnly !== "boolean") {
    throw typeError("weightsOnly must be a boolean");
  }
  if (onProgress !== undefined && typeof onProgress !== "function") {
    throw typeError("onProgress must be a function");
  }
  if (name !== undefined && typeof name !== "string") throw typeError("name must be a string");
  let location = null;
  let callback;
  if (typeof mapLocation === "function") {
    callback = mapLocation;
  } else if (typeof mapLocation === "string") {
    location = mapLocation;
  } else if (mapLocation instanceof Map) {
    location = [...mapLocation];
  } else if (typeof mapLocation === "object" && mapLocation !== null) {
    location = Object.entries(mapLocation);
  } else if (mapLocation !== undefined && mapLocation !== null) {
    throw typeError("mapLocation must be a device string, a {from: to} object or a function");
  }
  if (device === undefined) {
    // "webgpu" named outright: fail before reading a byte (a callback's answers fail while planning).
    const named = typeof location === "string" ? [location] : Array.isArray(location) ? location.map((e) => e[1]) : [];
    if (named.some((d) => d === "webgpu" || d === "wgpu")) {
      throw typeError('mapLocation places storages on "webgpu", but no device was given: pass { device: GPUDevice }');
    }
  }
  return {
    planner: { weightsOnly: weightsOnly ?? true, encoding, mapLocation: location, callback: !!callback, webgpu: device !== undefined },
    callback,
    onProgress,
    name,
    device,
    dtype,
    signal,
    rootJson: options[ROOT_JSON] === true,
  };
}

class Progress {
  constructor(report) {
    this.report = report;
    this.loaded = 0;
    this.total = undefined;
  }
  add(n) {
    this.loaded += n;
    if (this.report) {
      const loadedBytes = this.total === undefined ? this.loaded : Math.min(this.loaded, this.total);
      this.report({ loadedBytes, totalBytes: this.total });
    }
  }
  done() {
    if (this.report) this.report({ loadedBytes: this.total, totalBytes: this.total });
  }
}

// ---- the load -----------------------------------------------------------------------------

/** The ranges the planner asks for, merged where they touch, as reads: `[offset, length, parts]`
 * where `parts` are the merged ranges the read covers. Ranges at most PLAN_GAP bytes apart are
 * read together (up to BATCH_BYTES a read): the local headers of many small records are then a
 * few reads, not one each (a Blob's read costs about what reading 64 KiB does), and the records
 * between them come with them. Only the parts enter wasm memory; the read is kept for placement
 * (`holding`), whose records in it are views of it. */
function planReads(ranges) {
  const sorted = ranges.filter(([, l]) => l > 0).map(([o, l]) => [o, o + l]).sort((a, b) => a[0] - b[0]);
  const parts = [];
  for (const [start, end] of sorted) {
    const last = parts[parts.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else parts.push([start, end]);
  }
  const reads = [];
  for (const [start, end] of parts) {
    const read = reads[reads.length - 1];
    if (read && start - read.end <= PLAN_GAP && end - read.start <= BATCH_BYTES) {
      read.end = end;
      read.parts.push([start, end - start]);
    } else {
      reads.push({ start, end, parts: [[start, end - start]] });
    }
  }
  return reads.map(({ start, end, parts }) => [start, end - start, parts]);
}

/** Runs the planner to completion: each round hands in the ranges the last one asked for. */
async function plan(planner, source, callback, progress) {
  const size = source.size;
  // The tail window from a multiple of 64: the records in it can be used as they lie.
  const tail = Math.floor((size - TAIL_BYTES) / 64) * 64;
  let need = tail <= HEAD_BYTES
    ? [[0, size]]
    : [[0, HEAD_BYTES], [tail, size - tail]];
  for (let round = 0; ; round++) {
    if (round > MAX_ROUNDS) {
      throw new PtloadError(`${source.name}: the planner asked for bytes ${MAX_ROUNDS} times`,
        { kind: "Unsupported", file: source.name });
    }
    await readEach(source, planReads(need), (offset, bytes, parts) => {
      for (const [at, length] of parts) planner.insert(at, bytes.subarray(at - offset, at - offset + length));
      progress.add(bytes.length);
    });
    need = planner.step(callback);
    if (need === null) {
      source.holding = false;
      return;
    }
  }
}

/** Reads `ranges` ([offset, length, ...rest]), up to READS_IN_FLIGHT at a time, calling
 * `f(offset, bytes, ...rest)` as each arrives; the first error is thrown once the reads under
 * way are done. */
async function readEach(source, ranges, f) {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < ranges.length) {
      const [offset, length, ...rest] = ranges[next++];
      try {
        f(offset, (await source.read(offset, length)).bytes, ...rest);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const workers = Array.from({ length: Math.min(READS_IN_FLIGHT, ranges.length) }, worker);
  const error = (await Promise.allSettled(workers)).find((r) => r.status === "rejected");
  if (error) throw error.reason;
}

/** Yields `[index, bytes, fresh]` for each job `[index, offset, length, transient]` in the order
 * given (a storage's record, stored or deflated; `transient`: its bytes are dropped once
 * inflated): views of a buffer; a Blob's or file's records read ahead with their neighbours
 * (BATCH_BYTES), each byte once. `fresh`: the bytes are the load's own (a read), not the
 * caller's buffer nor shared with another record. */
async function* recordBytes(source, jobs, progress, signal) {
  if (!(source instanceof BlobSource)) {
    for (const [index, offset, length] of jobs) {
      throwIfAborted(signal);
      const { bytes, fresh } = await source.read(offset, length);
      progress.add(length);
      yield [index, bytes, fresh];
    }
    return;
  }
  // The reads, in the jobs' order: each with the records it completes (`records`: [index,
  // offset in the read, length]; `whole`: a record read in parts, complete after its last).
  const reads = [];
  for (let k = 0; k < jobs.length;) {
    const [index, offset, length, transient = false] = jobs[k++];
    const held = length === 0 ? new Uint8Array(0) : source.heldBytes(offset, length);
    if (held) {
      reads.push({ offset, length: 0, bytes: held, held: true, records: [[index, 0, length]] });
    } else if (length < BATCH_BYTES) {
      // With its neighbours in the file (torch writes records in the order they are referenced).
      // One arrayBuffer() read, also where the host makes fresh buffers (see BATCH_GAP).
      const records = [[index, 0, length]];
      let end = offset + length;
      for (; k < jobs.length; k++) {
        const [i, o, l] = jobs[k];
        if (o < end || o - end > BATCH_GAP || o + l - offset > BATCH_BYTES ||
            source.heldBytes(o, l)) break;
        records.push([i, o - offset, l]);
        end = o + l;
      }
      reads.push({ offset, length: end - offset, records });
    } else if (length < source.partsFrom) {
      reads.push({ offset, length, records: [[index, 0, length]] });
    } else {
      const into = { size: length, bytes: null, transient };
      for (let at = 0; at < length; at += source.part) {
        const n = Math.min(source.part, length - at);
        reads.push({ offset: offset + at, length: n, into, at, whole: at + n === length ? index : undefined });
      }
    }
  }
  const ahead = new ReadAhead(source, reads);
  try {
    for (const r of reads) {
      throwIfAborted(signal);
      const bytes = await ahead.take();
      progress.add(r.length); // kept reads were counted when read
      if (r.records) for (const [index, at, length] of r.records) yield [index, bytes.subarray(at, at + length), !r.held];
      if (r.whole !== undefined) yield [r.whole, r.into.bytes, true];
    }
  } finally {
    await ahead.close();
  }
}

function arrayOf(dtype) {
  const Ctor = ARRAYS[dtype];
  if (!Ctor) throw new Error(`ptload: no TypedArray for dtype ${dtype}`);
  return Ctor;
}

/** The tensor's `data`: a view of the storage bytes it reaches (its span, from the plan). A
 * storage viewed by a wider dtype than its own alignment (an untyped storage viewed as two
 * dtypes) gives that tensor a copy of its span. */
function viewOf(tensor) {
  const bytes = tensor.storage && tensor.storage.bytes;
  if (!bytes) return null;
  const Ctor = arrayOf(tensor.dtype);
  const [first, last] = tensor._layout.span;
  const start = first * tensor.itemsize;
  const end = last * tensor.itemsize;
  if (end > bytes.byteLength) {
    throw new PtloadError(`ptload: tensor view (bytes ${start}..${end}) runs past its storage ${tensor.storage.key}`,
      { kind: "InvalidTensor" });
  }
  const length = (end - start) / Ctor.BYTES_PER_ELEMENT;
  if ((bytes.byteOffset + start) % Ctor.BYTES_PER_ELEMENT !== 0) {
    return new Ctor(bytes.slice(start, end).buffer, 0, length);
  }
  return new Ctor(bytes.buffer, bytes.byteOffset + start, length);
}

/** The public API over a wasm-bindgen module (`getBindings` returns it, or a promise of it).
 * `host.open(pathOrUrl)` says what a string or URL input reads: `{ input, name }`, the input
 * a Blob, a FILE_READER, bytes or a Response (index.cjs: the file, browser.mjs: fetch).
 * `host.alloc(n)`, if given, makes the ArrayBuffers that Blob and file reads fill (Node: not
 * zeroed first). `host.fresh`, if given, makes big ones with their pages touched off the main
 * thread: `make(n)`, a promise of an ArrayBuffer of n bytes. */
export function createApi(getBindings, host = {}) {
  /** Loads a checkpoint (see index.d.ts for the input kinds and options). */
  async function load(input, options) {
    const opts = normalizeOptions(options);
    throwIfAborted(opts.signal);
    const progress = new Progress(opts.onProgress);
    const source = await openInput(input, opts.name, progress, host);
    progress.total = source.size;
    try {
      const bindings = await getBindings();
      if (source instanceof FolderSource) return await loadFolder(bindings, source, opts, progress);
      if (source instanceof StreamSource) return await loadStream(bindings, source, opts, progress);
      return await loadFile(bindings, source, opts, progress);
    } catch (e) {
      throw fromWasm(e);
    } finally {
      // A host's file is closed however the load ends (closing a file read from cannot lose data).
      if (source.close) await source.close().catch(() => {});
    }
  }

  return { load, Checkpoint, Tensor, Storage, PtloadError };
}

/** A distributed checkpoint, consolidated by the wasm module (src/wasm/dcp.rs): every tensor at
 * its full size, in a buffer of its own. */
async function loadFolder(bindings, source, opts, progress) {
  if (!source.files.some(([file]) => file === ".metadata")) {
    throw new PtloadError(`${source.name}: not a PyTorch checkpoint: a folder's files without .metadata ` +
      "(a distributed checkpoint has .metadata and __<rank>_<n>.distcp files)", { kind: "NotACheckpoint", file: source.name });
  }
  const { names, contents } = await source.readAll(progress);
  const dcp = new bindings.DcpCheckpoint(source.name, names, contents, opts.planner);
  try {
    const storages = dcp.storages().map((s) => new Storage(s));
    const all = [];
    const tree = dcp.tree(
      (meta) => {
        const t = new Tensor(meta, meta.storage === null ? null : storages[meta.storage], bindings);
        all.push(t);
        return t;
      },
      (index) => storages[index],
    );
    storages.forEach((s, i) => {
      const bytes = dcp.bytes(i);
      if (bytes !== undefined) s.bytes = bytes;
    });
    for (const t of all) t.data = viewOf(t);
    progress.done();
    const ckpt = new Checkpoint(tree, storages, tree.tensors);
    if (opts.rootJson) ckpt[ROOT_JSON] = dcp.rootJson();
    return ckpt;
  } finally {
    dcp.free();
  }
}

/** Plans the load, then reads and places every storage (on the CPU, or on the GPU for
 * `webgpu`). */
async function loadFile(bindings, source, opts, progress) {
  const planner = new bindings.Planner(source.name, source.size, opts.planner);
  let gpu = null;
  let storages = [];
  try {
    await plan(planner, source, opts.callback, progress);
    const made = makeTree(planner, bindings, opts);
    ({ storages } = made);
    const { planned, all, tree, rootJson } = made;
    throwIfAborted(opts.signal);
    await place(planner, bindings, source, planned, storages, all, progress, opts.signal);
    if (planned.some((s) => s.device === "webgpu")) {
      gpu = new WebGpuPlacement(opts.device, source.name, (message) => new PtloadError(message, { kind: "Placement", file: source.name }));
      await placeOnGpu(gpu, planner, bindings, source, planned, storages, all, progress, opts);
      await gpu.finish();
    }
    progress.done();
    const ckpt = new Checkpoint(tree, storages, tree.tensors);
    if (rootJson !== undefined) ckpt[ROOT_JSON] = rootJson;
    return ckpt;
  } catch (e) {
    if (gpu) {
      await gpu.abort();
      for (const s of storages) s.buffer = null;
    }
    throw e;
  } finally {
    planner.free();
  }
}

/** The planned storages, their Storage objects, the tree (making every Tensor), and the root as
 * JSON when asked for. */
function makeTree(planner, bindings, opts) {
  const planned = planner.storages();
  const storages = planned.map((s) => new Storage(s));
  const all = [];
  const tree = planner.tree(
    (meta) => {
      const t = new Tensor(meta, meta.storage === null ? null : storages[meta.storage], bindings);
      all.push(t);
      return t;
    },
    (index) => storages[index],
  );
  const rootJson = opts.rootJson ? planner.rootJson() : undefined;
  return { planned, storages, all, tree, rootJson };
}

/** Reads each storage once and decides, as the plan says (the native CPU placer's rules), to
 * use its bytes in place (a view of the caller's buffer: stored, not swapped, aligned) or to
 * copy them (inflated, byte-swapped by the wasm module, or realigned). */
async function place(planner, bindings, source, planned, storages, tensors, progress, signal) {
  const jobs = [];
  planned.forEach((s, i) => {
    const r = s.record;
    if (r && s.device === "cpu") jobs.push([i, r.dataOffset, r.deflated ? r.storedLen : r.size, r.deflated]);
  });
  for await (const [i, read, fresh] of recordBytes(source, jobs, progress, signal)) {
    const s = planned[i];
    let bytes = read;
    let owned = fresh;
    if (s.record.deflated) {
      bytes = planner.inflate(i, bytes);
      owned = true;
    }
    if (s.swap) {
      if (!owned) bytes = bytes.slice();
      for (let at = 0; at < bytes.length; at += SWAP_CHUNK) {
        bindings.swapBytes(bytes.subarray(at, at + SWAP_CHUNK), s.swapUnit);
      }
      owned = true;
    }
    if (bytes.byteOffset % s.align !== 0) {
      bytes = bytes.slice();
      owned = true;
    }
    storages[i].bytes = bytes;
    storages[i].zeroCopy = !owned && source.callerOwned;
  }
  for (const t of tensors) t.data = viewOf(t);
}

function throwIfAborted(signal) {
  if (signal && signal.aborted) {
    throw signal.reason ?? new PtloadError("ptload: the load was aborted", { kind: "Cancelled" });
  }
}

/** Bytes read (or inflated) per step on the way to the GPU: what JS holds at a time. */
const GPU_CHUNK_BYTES = 8 << 20;

/** Calls `f` with the bytes of a record's data, in order, chunk by chunk: views of the caller's
 * buffer, slices of a Blob, or what a DecompressionStream inflates (falling back on the wasm
 * inflater where there is none). */
async function recordChunks(planner, source, index, record, progress, signal, f) {
  if (!record.deflated) {
    for (let at = 0; at < record.size; at += GPU_CHUNK_BYTES) {
      throwIfAborted(signal);
      const n = Math.min(GPU_CHUNK_BYTES, record.size - at);
      const { bytes, fresh } = await source.read(record.dataOffset + at, n);
      progress.add(n);
      await f(bytes, fresh);
    }
    return;
  }
  if (typeof DecompressionStream !== "function") {
    const { bytes } = await source.read(record.dataOffset, record.storedLen);
    progress.add(record.storedLen);
    await f(planner.inflate(index, bytes), true);
    return;
  }
  const stream = new DecompressionStream("deflate-raw");
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const feed = (async () => {
    for (let at = 0; at < record.storedLen; at += GPU_CHUNK_BYTES) {
      throwIfAborted(signal);
      const n = Math.min(GPU_CHUNK_BYTES, record.storedLen - at);
      const { bytes } = await source.read(record.dataOffset + at, n);
      await writer.write(bytes);
      progress.add(n);
    }
    await writer.close();
  })();
  // If feeding fails, the reader must not wait forever.
  feed.catch((e) => reader.cancel(e).catch(() => {}));
  let inflated = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      inflated += value.length;
      if (inflated > record.size) {
        throw new PtloadError(`${source.name}: record ${record.name} inflates to more than its ${record.size} bytes`,
          { kind: "Record", file: source.name });
      }
      await f(value, true);
    }
  } catch (e) {
    await feed.catch(() => {});
    throw e instanceof TypeError && !String(e.message).startsWith("ptload")
      ? new PtloadError(`${source.name}: record ${record.name}: invalid deflate data (${e.message})`,
        { kind: "Record", file: source.name })
      : e;
  }
  await feed;
}

/** Puts every storage mapped to `webgpu` in its own GPUBuffer, straight from the input: byte
 * swapping (big-endian files, as the plan says) happens chunk by chunk on the way (in wasm, the
 * native swap), and `dtype` conversion on the GPU. */
async function placeOnGpu(gpu, planner, bindings, source, planned, storages, tensors, progress, opts) {
  const views = new Map();
  for (const t of tensors) {
    if (!t.storage) continue;
    if (!views.has(t.storage)) views.set(t.storage, []);
    views.get(t.storage).push(t);
  }
  for (let i = 0; i < planned.length; i++) {
    const s = planned[i];
    if (s.device !== "webgpu") continue;
    throwIfAborted(opts.signal);
    const feed = s.record ? (f) => recordChunks(planner, source, i, s.record, progress, opts.signal, f) : null;
    await placeStorageOnGpu(gpu, bindings, s, storages[i], views.get(storages[i]) ?? [], opts, feed);
  }
  for (const t of tensors) {
    if (t.storage && t.storage.buffer) t.data = { buffer: t.storage.buffer, byteOffset: t.storageOffset * t.itemsize };
  }
}

/** Puts one storage in its own GPUBuffer from `feed(f)`, which calls `f` with its bytes in
 * order (or nothing, for a storage without a record); swaps on the way as the plan says, then
 * converts to `opts.dtype` on the GPU. */
async function placeStorageOnGpu(gpu, bindings, s, storage, seen, opts, feed) {
  const nbytes = s.numel * s.itemsize;
  const writer = gpu.begin(s.key, nbytes);
  if (feed) {
    const unit = s.swap ? s.swapUnit : 1;
    const carry = new Uint8Array(Math.max(unit - 1, 0));
    let carried = 0;
    await feed(async (bytes) => {
      if (unit === 1) return writer.put(bytes);
      // Swap whole elements: an element split across chunks waits for its other half.
      const joined = new Uint8Array(carried + bytes.length);
      joined.set(carry.subarray(0, carried));
      joined.set(bytes, carried);
      const whole = joined.length - (joined.length % unit);
      carried = joined.length - whole;
      carry.set(joined.subarray(whole));
      const out = joined.subarray(0, whole);
      bindings.swapBytes(out, unit);
      return writer.put(out);
    });
  }
  let buffer = writer.end();
  let dtype = s.dtype;
  if (opts.dtype && seen.every((t) => t.dtype === s.dtype)) {
    const converted = gpu.convert(buffer, s.dtype, s.numel, opts.dtype);
    if (converted) {
      buffer = converted;
      dtype = opts.dtype;
    }
  }
  storage.buffer = buffer;
  storage.gpuDevice = opts.device;
  if (dtype !== s.dtype) {
    storage.dtype = dtype;
    storage.nbytes = s.numel * (dtype === "float16" ? 2 : 4);
    for (const t of seen) {
      t.dtype = dtype;
      t.itemsize = dtype === "float16" ? 2 : 4;
    }
  }
}

// ---- a Response as it streams ------------------------------------------------------------

/** A fetch Response, read once, in order. A zip checkpoint is placed as its records stream by
 * (torch writes `data.pkl` first): JS holds the pickle and one chunk at a time, never the file.
 * Anything else (legacy and tar files, TorchScript archives, a zip whose `data.pkl` does not
 * come before its tensor records) is read whole first, as before. */
class StreamSource {
  constructor(response, name, size) {
    this.response = response;
    this.name = name;
    this.size = size;
    this.callerOwned = false;
  }
}

/** Sequential reads over a ReadableStream. While `kept` is an array, every piece read is kept
 * (the metadata phase: a file that cannot stream is then loaded from what was kept and the rest). */
class ByteStream {
  constructor(reader, progress) {
    this.reader = reader;
    this.progress = progress;
    this.chunks = [];
    this.head = 0;
    this.buffered = 0;
    this.pos = 0;
    this.ended = false;
    this.kept = [];
  }

  async fill(n = 1) {
    while (this.buffered < n && !this.ended) {
      const { done, value } = await this.reader.read();
      if (done) {
        this.ended = true;
        break;
      }
      if (value.length === 0) continue;
      this.chunks.push(value);
      this.buffered += value.length;
      this.progress.add(value.length);
    }
    return this.buffered >= n;
  }

  /** Up to `n` of the next bytes, without consuming them. */
  async peek(n) {
    await this.fill(n);
    const out = new Uint8Array(Math.min(n, this.buffered));
    let at = 0;
    for (let k = 0; at < out.length; k++) {
      const chunk = k === 0 ? this.chunks[0].subarray(this.head) : this.chunks[k];
      const part = chunk.subarray(0, out.length - at);
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  /** The next piece, at most `max` bytes (a view of what arrived), or null at the end. */
  async next(max) {
    if (!(await this.fill())) return null;
    const first = this.chunks[0];
    const n = Math.min(max, first.length - this.head);
    const piece = first.subarray(this.head, this.head + n);
    this.head += n;
    this.buffered -= n;
    this.pos += n;
    if (this.head === first.length) {
      this.chunks.shift();
      this.head = 0;
    }
    if (this.kept) this.kept.push(piece);
    return piece;
  }

  /** The next `n` bytes (fewer only at the end of the stream). */
  async take(n) {
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const piece = await this.next(n - at);
      if (!piece) return out.subarray(0, at);
      out.set(piece, at);
      at += piece.length;
    }
    return out;
  }

  /** Calls `f` with the next `n` bytes, piece by piece; `file` names the input in errors. */
  async forward(n, f, file, signal) {
    let left = n;
    while (left > 0) {
      throwIfAborted(signal);
      const piece = await this.next(Math.min(left, GPU_CHUNK_BYTES));
      if (!piece) {
        throw new PtloadError(`${file}: the stream ended ${left} bytes into a record (truncated?)`, { kind: "Zip", file });
      }
      left -= piece.length;
      await f(piece);
    }
  }

  /** What was kept and the rest of the stream, as one buffer. */
  async rest() {
    while (await this.next(Infinity));
    const out = new Uint8Array(this.kept.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const piece of this.kept) {
      out.set(piece, at);
      at += piece.length;
    }
    this.kept = null;
    return out;
  }
}

const LOCAL_HEADER = 0x04034b50;
/** The largest `data.pkl` held while streaming (the native `max_pickle_bytes` default). */
const MAX_STREAMED_PICKLE = 1 << 30;

/** The zip local header at the stream's position, or null when the entries end there (the
 * central directory, or not a zip at all). */
async function localHeader(stream, file) {
  const at = stream.pos;
  const fixed = await stream.take(30);
  if (fixed.length < 4) return null;
  const v = new DataView(fixed.buffer, fixed.byteOffset, fixed.length);
  if (v.getUint32(0, true) !== LOCAL_HEADER) return null;
  if (fixed.length < 30) throw new PtloadError(`${file}: zip container, byte 0x${at.toString(16).toUpperCase()}: truncated local file header`, { kind: "Zip", file, offset: at });
  const flags = v.getUint16(6, true);
  const method = v.getUint16(8, true);
  let csize = v.getUint32(18, true);
  let size = v.getUint32(22, true);
  const name = new TextDecoder().decode(await stream.take(v.getUint16(26, true)));
  const extra = await stream.take(v.getUint16(28, true));
  if (csize === 0xffffffff || size === 0xffffffff) {
    // zip64: the 0x0001 extra field holds the sizes that do not fit, uncompressed first.
    const e = new DataView(extra.buffer, extra.byteOffset, extra.length);
    for (let i = 0; i + 4 <= extra.length;) {
      const id = e.getUint16(i, true);
      const len = e.getUint16(i + 2, true);
      if (id === 1) {
        let k = i + 4;
        if (size === 0xffffffff && k + 8 <= i + 4 + len) (size = Number(e.getBigUint64(k, true))), (k += 8);
        if (csize === 0xffffffff && k + 8 <= i + 4 + len) csize = Number(e.getBigUint64(k, true));
        break;
      }
      i += 4 + len;
    }
  }
  const zip64 = extra.length >= 4 && hasZip64(extra);
  return { at, name, flags, method, csize, size, zip64, descriptor: (flags & 8) !== 0 };
}

function hasZip64(extra) {
  const e = new DataView(extra.buffer, extra.byteOffset, extra.length);
  for (let i = 0; i + 4 <= extra.length; i += 4 + e.getUint16(i + 2, true)) {
    if (e.getUint16(i, true) === 1) return true;
  }
  return false;
}

const DESCRIPTOR = 0x08074b50;
/** Bytes looked at ahead while searching for a data descriptor. */
const SCAN_WINDOW = 8 << 10;

/** Reads a data descriptor (torch writes one after every record: its local headers say size 0)
 * and returns the record's [compressed, uncompressed] sizes, or null when none is there. */
async function readDescriptor(stream, zip64) {
  const len = zip64 ? 24 : 16;
  const bytes = await stream.peek(len);
  if (bytes.length < len) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  if (v.getUint32(0, true) !== DESCRIPTOR) return null;
  await stream.take(len);
  return zip64
    ? [Number(v.getBigUint64(8, true)), Number(v.getBigUint64(16, true))]
    : [v.getUint32(8, true), v.getUint32(12, true)];
}

/** A stored record whose sizes follow it in a data descriptor: its bytes are what comes before
 * the first descriptor whose sizes equal their distance from the record's start. Calls `f` with
 * them piece by piece; returns the size, or null when the stream ends first. */
async function scanStored(stream, header, f) {
  const len = header.zip64 ? 24 : 16;
  let size = 0;
  for (;;) {
    const window = await stream.peek(SCAN_WINDOW);
    if (window.length < len) return null;
    const v = new DataView(window.buffer, window.byteOffset, window.length);
    for (let q = 0; q + len <= window.length; q++) {
      if (v.getUint32(q, true) !== DESCRIPTOR) continue;
      const [c, u] = header.zip64
        ? [Number(v.getBigUint64(q + 8, true)), Number(v.getBigUint64(q + 16, true))]
        : [v.getUint32(q + 8, true), v.getUint32(q + 12, true)];
      if (c === size + q && u === size + q) {
        if (q > 0) await f(await stream.take(q));
        await stream.take(len);
        return size + q;
      }
    }
    const safe = window.length - len + 1;
    await f(await stream.take(safe));
    size += safe;
  }
}

/** Calls `f` with a streamed record's bytes, inflated when deflated. */
async function streamRecord(stream, header, file, signal, f) {
  if (header.method === 0) return stream.forward(header.csize, f, file, signal);
  if (typeof DecompressionStream !== "function") {
    throw new PtloadError(`${file}: record ${header.name} is deflated and this runtime has no DecompressionStream`, { kind: "Unsupported", file });
  }
  const inflater = new DecompressionStream("deflate-raw");
  const writer = inflater.writable.getWriter();
  const reader = inflater.readable.getReader();
  const feed = (async () => {
    await stream.forward(header.csize, (piece) => writer.write(piece), file, signal);
    await writer.close();
  })();
  feed.catch((e) => reader.cancel(e).catch(() => {}));
  let inflated = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      inflated += value.length;
      if (inflated > header.size) {
        throw new PtloadError(`${file}: record ${header.name} inflates to more than its ${header.size} bytes`, { kind: "Record", file });
      }
      await f(value);
    }
  } catch (e) {
    await feed.catch(() => {});
    throw e instanceof PtloadError ? e
      : new PtloadError(`${file}: record ${header.name}: invalid deflate data (${e.message})`, { kind: "Record", file });
  }
  await feed;
  if (inflated !== header.size) {
    throw new PtloadError(`${file}: record ${header.name} inflates to ${inflated} bytes, not its ${header.size}`, { kind: "Record", file });
  }
}

/** Loads a Response as it streams (see StreamSource). */
async function loadStream(bindings, source, opts, progress) {
  const file = source.name;
  const reader = source.response.body.getReader();
  const stream = new ByteStream(reader, progress);
  const whole = async () => {
    const bytes = await stream.rest();
    progress.total ??= bytes.length;
    return loadFile(bindings, new BufferSource(bytes, file, false), opts, progress);
  };
  // The records before the first tensor record: data.pkl and byteorder are kept.
  const small = new Map();
  let prefix = null;
  let header;
  for (;;) {
    header = await localHeader(stream, file);
    const streamable = header && (header.method === 0 || (header.method === 8 && !header.descriptor));
    if (!streamable || (header.method === 8 && typeof DecompressionStream !== "function")) return whole();
    const slash = header.name.indexOf("/");
    const folder = header.name.slice(0, slash);
    const rel = header.name.slice(slash + 1);
    if (slash <= 0 || (prefix !== null && folder !== prefix)) return whole();
    prefix = folder;
    if (rel.startsWith("data/")) break;
    if (rel === "constants.pkl" || rel.startsWith("code/")) return whole(); // TorchScript
    const keep = rel === "data.pkl" || rel === "byteorder";
    if (header.descriptor && header.method === 0) {
      const pieces = [];
      let total = 0;
      const size = await scanStored(stream, header, (piece) => {
        total += piece.length;
        // Larger than the native default limit: the whole-file path refuses it by name.
        if (keep && total <= MAX_STREAMED_PICKLE) pieces.push(piece);
      });
      if (size === null || total > MAX_STREAMED_PICKLE) return whole();
      if (keep) small.set(rel, concat(pieces, total));
    } else if (keep) {
      if (header.size > MAX_STREAMED_PICKLE) return whole();
      const bytes = new Uint8Array(header.size);
      let at = 0;
      await streamRecord(stream, header, file, opts.signal, (piece) => {
        bytes.set(piece, at);
        at += piece.length;
      });
      small.set(rel, bytes);
    } else {
      await stream.forward(header.csize, () => {}, file, opts.signal);
    }
  }
  if (!small.has("data.pkl")) return whole();
  stream.kept = null; // from here on, bytes go straight to their storages

  const planner = new bindings.Planner(file, Number.MAX_SAFE_INTEGER, opts.planner);
  let gpu = null;
  let storages = [];
  try {
    planner.stream(prefix, small.get("data.pkl"), small.get("byteorder"));
    if (planner.step(opts.callback) !== null) throw new Error("ptload: a streamed plan asked for bytes");
    const made = makeTree(planner, bindings, opts);
    ({ storages } = made);
    const { planned, all, tree, rootJson } = made;
    const byName = new Map();
    planned.forEach((s, i) => s.record && byName.set(s.record.name, i));
    const views = new Map();
    for (const t of all) {
      if (!t.storage) continue;
      if (!views.has(t.storage)) views.set(t.storage, []);
      views.get(t.storage).push(t);
    }
    if (planned.some((s) => s.device === "webgpu")) {
      gpu = new WebGpuPlacement(opts.device, file, (message) => new PtloadError(message, { kind: "Placement", file }));
    }
    const placed = new Set();
    let version = null;
    for (; header; header = await localHeader(stream, file)) {
      throwIfAborted(opts.signal);
      const unknown = header.descriptor && header.csize === 0;
      if (unknown && header.method !== 0) {
        throw new PtloadError(`${file}: record ${header.name} is deflated with its sizes in a data descriptor: ` +
          "it cannot be read as a stream", { kind: "Zip", file, offset: header.at });
      }
      const i = byName.get(header.name);
      if (i === undefined || placed.has(i)) {
        const isVersion = header.name === `${prefix}/version` || header.name === `${prefix}/.data/version`;
        const pieces = [];
        if (unknown) {
          const size = await scanStored(stream, header, (piece) => isVersion && pieces.push(piece));
          if (size === null) throw truncatedStream(file, header);
        } else {
          await stream.forward(header.csize, (piece) => isVersion && pieces.push(piece.slice()), file, opts.signal);
          if (header.descriptor) await readDescriptor(stream, header.zip64);
        }
        if (isVersion) version = new TextDecoder().decode(concat(pieces, pieces.reduce((n, p) => n + p.length, 0)));
        continue;
      }
      const s = planned[i];
      if (unknown) header.csize = header.size = s.record.size; // checked against the descriptor below
      if (header.size !== s.record.size) {
        throw new PtloadError(`${file}: storage '${header.name}' (data at byte 0x${stream.pos.toString(16).toUpperCase()}): ` +
          `record size (${header.size} bytes) does not match expected size (${s.record.size} bytes = ${s.numel} elements * ` +
          `${s.itemsize} bytes/element)`, { kind: "StorageSize", file, offset: stream.pos });
      }
      placed.add(i);
      const feed = (f) => streamRecord(stream, header, file, opts.signal, f);
      if (s.device === "webgpu") {
        await placeStorageOnGpu(gpu, bindings, s, storages[i], views.get(storages[i]) ?? [], opts, feed);
      } else {
        const bytes = new Uint8Array(s.record.size);
        let at = 0;
        await feed((piece) => {
          bytes.set(piece, at);
          at += piece.length;
        });
        if (s.swap) {
          for (let k = 0; k < bytes.length; k += SWAP_CHUNK) bindings.swapBytes(bytes.subarray(k, k + SWAP_CHUNK), s.swapUnit);
        }
        storages[i].bytes = bytes;
      }
      if (header.descriptor) {
        const sizes = await readDescriptor(stream, header.zip64);
        if (unknown && (sizes === null || sizes[1] !== s.record.size)) {
          throw new PtloadError(`${file}: storage '${header.name}': record size (${sizes ? sizes[1] : "unknown"} bytes) ` +
            `does not match expected size (${s.record.size} bytes = ${s.numel} elements * ${s.itemsize} bytes/element)`,
            { kind: "StorageSize", file, offset: header.at });
        }
      }
    }
    planned.forEach((s, i) => {
      if (s.record && !placed.has(i)) {
        throw new PtloadError(`${file}: record '${s.record.name}' is missing from the archive`, { kind: "MissingRecord", file });
      }
    });
    if (version !== null) {
      const v = Number.parseInt(version.trim(), 10);
      if (!(v >= 1 && v <= 10)) {
        throw new PtloadError(`${file}: Attempted to read a PyTorch file with version ${version.trim()}, but the ` +
          `${v < 1 ? "minimum" : "maximum"} supported version for reading is ${v < 1 ? 1 : 10}`, { kind: "UnsupportedVersion", file });
      }
    }
    if (gpu) await gpu.finish();
    for (const t of all) {
      t.data = t.storage && t.storage.buffer
        ? { buffer: t.storage.buffer, byteOffset: t.storageOffset * t.itemsize }
        : viewOf(t);
    }
    // The central directory: read through (small), so progress ends at the file's size.
    while (await stream.next(Infinity));
    progress.total ??= stream.pos;
    progress.done();
    const ckpt = new Checkpoint(tree, storages, tree.tensors);
    if (rootJson !== undefined) ckpt[ROOT_JSON] = rootJson;
    return ckpt;
  } catch (e) {
    if (gpu) {
      await gpu.abort();
      for (const s of storages) s.buffer = null;
    }
    await reader.cancel().catch(() => {});
    throw e;
  } finally {
    planner.free();
  }
}

function concat(pieces, total) {
  const out = new Uint8Array(total);
  let at = 0;
  for (const piece of pieces) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}

function truncatedStream(file, header) {
  return new PtloadError(`${file}: the stream ended inside record ${header.name} (truncated?)`, { kind: "Zip", file, offset: header.at });
}
