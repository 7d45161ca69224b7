// The JS half of ptload: input handling, the driver loop that feeds the wasm planner the byte
// ranges it asks for, and CPU placement (zero-copy TypedArray views, copies only when needed).
// Shared by every entry point: scripts/build-npm emits this file as ESM (browsers, bundlers,
// Node `import`) and as CommonJS (Node `require`), with its imports of sibling modules.

import { WebGpuPlacement, isGpuDevice, readBack } from "./webgpu.mjs";

/** The TypedArray for each dtype, and how many array elements make one tensor element. */
const ARRAYS = {
  float64: [Float64Array, 1],
  float32: [Float32Array, 1],
  float16: [Uint16Array, 1],
  bfloat16: [Uint16Array, 1],
  float8_e4m3fn: [Uint8Array, 1],
  float8_e5m2: [Uint8Array, 1],
  float8_e4m3fnuz: [Uint8Array, 1],
  float8_e5m2fnuz: [Uint8Array, 1],
  float8_e8m0fnu: [Uint8Array, 1],
  float4_e2m1fn_x2: [Uint8Array, 1],
  complex32: [Uint16Array, 2],
  bcomplex32: [Uint16Array, 2],
  complex64: [Float32Array, 2],
  complex128: [Float64Array, 2],
  int8: [Int8Array, 1],
  int16: [Int16Array, 1],
  int32: [Int32Array, 1],
  int64: [BigInt64Array, 1],
  uint8: [Uint8Array, 1],
  uint16: [Uint16Array, 1],
  uint32: [Uint32Array, 1],
  uint64: [BigUint64Array, 1],
  bool: [Uint8Array, 1],
  qint8: [Int8Array, 1],
  quint8: [Uint8Array, 1],
  qint32: [Int32Array, 1],
  quint4x2: [Uint8Array, 1],
  quint2x4: [Uint8Array, 1],
  bits8: [Uint8Array, 1],
  bits16: [Uint16Array, 1],
  bits1x8: [Uint8Array, 1],
  bits2x4: [Uint8Array, 1],
  bits4x2: [Uint8Array, 1],
};

/** The first bytes read (format sniffing) and the zip tail window (EOCD, zip64 records). */
const HEAD_BYTES = 262;
const TAIL_BYTES = 65557 + 22 + 76;
/** Stored records smaller than this are read from a Blob together with their neighbours. */
const COALESCE_BYTES = 1 << 20;
/** A plan takes a handful of rounds; more means a bug, not a big file. */
const MAX_ROUNDS = 64;

const HOST_ORDER = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? "little" : "big";

function typeError(message) {
  return new TypeError(`ptload: ${message}`);
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
  constructor(meta, storage) {
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
    return isContiguous(this.shape, this.stride);
  }

  /** The elements in C-contiguous order, little-endian, as bytes (`bool` as one byte 0/1).
   * For a contiguous tensor this is a view of the same memory as `data`, not a copy. */
  async contiguousBytes() {
    const storage = this.storage;
    if (storage && storage.buffer) {
      // Read back the span the view reaches, then walk it on the host.
      const span = extentOf(this.shape, this.stride) * this.itemsize;
      const bytes = await readBack(storage.gpuDevice, storage.buffer, this.storageOffset * this.itemsize, span);
      return contiguous(bytes, this.shape, this.stride, 0, this.itemsize);
    }
    const bytes = storage && storage.bytes;
    if (!bytes) {
      throw new Error(`the tensor is on the ${this.device} device: it has no data in host memory`);
    }
    return contiguous(bytes, this.shape, this.stride, this.storageOffset, this.itemsize);
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

/** Elements from a view's first element through the last one it reaches. */
function extentOf(shape, stride) {
  if (shape.includes(0)) return 0;
  let extent = 1;
  for (let d = 0; d < shape.length; d++) extent += (shape[d] - 1) * stride[d];
  return extent;
}

function isContiguous(shape, stride) {
  if (shape.includes(0)) return true;
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] === 1) continue;
    if (stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

function swapInPlace(bytes, unit) {
  const n = bytes.length - (bytes.length % unit);
  for (let i = 0; i < n; i += unit) {
    for (let a = i, b = i + unit - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

/** C-order bytes of a strided view, run by run (as the native `for_each_run`); a view of
 * `bytes` when the tensor is contiguous. Bytes are in host order, little-endian wherever JS
 * engines run. */
function contiguous(bytes, shape, stride, offset, size) {
  const numel = shape.reduce((a, b) => a * b, 1);
  const total = numel * size;
  if (numel === 0) return new Uint8Array(0);
  if (isContiguous(shape, stride)) return bytes.subarray(offset * size, offset * size + total);
  // Merge the trailing dimensions that are contiguous into one run.
  let run = 1;
  let outer = shape.length;
  while (outer > 0 && stride[outer - 1] === run) {
    run *= shape[outer - 1];
    outer--;
  }
  const runBytes = run * size;
  const out = new Uint8Array(total);
  const index = new Array(outer).fill(0);
  let at = offset;
  for (let pos = 0; pos < total; pos += runBytes) {
    const start = at * size;
    out.set(bytes.subarray(start, start + runBytes), pos);
    // Advance the outer index like an odometer.
    for (let d = outer - 1; d >= 0; d--) {
      index[d]++;
      at += stride[d];
      if (index[d] < shape[d]) break;
      at -= stride[d] * shape[d];
      index[d] = 0;
    }
  }
  return out;
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

class BlobSource {
  constructor(blob, name) {
    this.blob = blob;
    this.size = blob.size;
    this.name = name;
    this.callerOwned = false;
    /** Set when the whole file had to be read (legacy and tar files): later reads are views. */
    this.whole = null;
  }
  async read(offset, length) {
    if (this.whole) return { bytes: this.whole.subarray(offset, offset + length), fresh: false };
    const bytes = new Uint8Array(await this.blob.slice(offset, offset + length).arrayBuffer());
    if (bytes.length !== length) {
      throw new Error(`${this.name}: read ${bytes.length} bytes at offset ${offset}, expected ${length} (was the file changed?)`);
    }
    if (offset === 0 && length === this.size) this.whole = bytes;
    return { bytes, fresh: true };
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

async function readResponse(response, progress) {
  if (!response.ok) {
    throw new Error(`${response.url || "<response>"}: HTTP status ${response.status}`);
  }
  if (response.bodyUsed) throw typeError("the Response body was already read");
  const encoded = response.headers.get("content-encoding");
  const declared = Number(response.headers.get("content-length"));
  const known = !encoded && Number.isSafeInteger(declared) && declared >= 0 ? declared : undefined;
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

async function openInput(input, name, progress) {
  if (input instanceof ArrayBuffer ||
      (typeof SharedArrayBuffer !== "undefined" && input instanceof SharedArrayBuffer)) {
    return new BufferSource(new Uint8Array(input), name ?? "<memory>", true);
  }
  if (ArrayBuffer.isView(input)) {
    const bytes = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    return new BufferSource(bytes, name ?? "<memory>", true);
  }
  if (isResponse(input)) {
    const bytes = await readResponse(input, progress);
    return new BufferSource(bytes, name ?? (input.url || "<memory>"), false);
  }
  if (isBlob(input)) {
    const fileName = typeof input.name === "string" && input.name ? input.name : undefined;
    return new BlobSource(input, name ?? fileName ?? "<memory>");
  }
  throw typeError("load() takes a Uint8Array, an ArrayBuffer, a Blob or File, or a fetch Response");
}

// ---- options ------------------------------------------------------------------------------

function normalizeOptions(options) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== "object") throw typeError("options must be an object");
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

/** Adds the ranges the planner asks for, merged where they touch. */
function merge(ranges) {
  const sorted = ranges.map(([o, l]) => [o, o + l]).sort((a, b) => a[0] - b[0]);
  const out = [];
  for (const [start, end] of sorted) {
    const last = out[out.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else out.push([start, end]);
  }
  return out.map(([s, e]) => [s, e - s]);
}

/** Runs the planner to completion: each round hands in the ranges the last one asked for. */
async function plan(planner, source, callback, progress) {
  const size = source.size;
  let need = size <= HEAD_BYTES + TAIL_BYTES
    ? [[0, size]]
    : [[0, HEAD_BYTES], [size - TAIL_BYTES, TAIL_BYTES]];
  for (let round = 0; ; round++) {
    if (round > MAX_ROUNDS) throw new Error(`${source.name}: the planner asked for bytes ${MAX_ROUNDS} times`);
    for (const [offset, length] of merge(need)) {
      if (length === 0) continue;
      const { bytes } = await source.read(offset, length);
      planner.insert(offset, bytes);
      progress.add(length);
    }
    need = planner.step(callback);
    if (need === null) return;
  }
}

/** Reads every stored record of a Blob, small neighbours together; returns index → bytes. */
async function readStored(source, storages, progress) {
  const jobs = [];
  storages.forEach((s, i) => {
    if (s.record && !s.record.deflated && s.device === "cpu") jobs.push([s.record.dataOffset, s.record.size, i]);
  });
  jobs.sort((a, b) => a[0] - b[0]);
  const out = new Map();
  let k = 0;
  while (k < jobs.length) {
    let start = jobs[k][0];
    let end = start + jobs[k][1];
    let j = k + 1;
    while (j < jobs.length && jobs[j][1] < COALESCE_BYTES && end - start < COALESCE_BYTES &&
           jobs[j][0] - end < 4096 && jobs[j][0] >= end) {
      end = Math.max(end, jobs[j][0] + jobs[j][1]);
      j++;
    }
    const { bytes, fresh } = await source.read(start, end - start);
    for (let m = k; m < j; m++) {
      const [offset, length, index] = jobs[m];
      out.set(index, { bytes: bytes.subarray(offset - start, offset - start + length), fresh });
    }
    progress.add(end - start);
    k = j;
  }
  return out;
}

function arrayOf(dtype) {
  const entry = ARRAYS[dtype];
  if (!entry) throw new Error(`ptload: no TypedArray for dtype ${dtype}`);
  return entry;
}

/** The tensor's `data`: a view from its first element through the last one it reaches. */
function viewOf(tensor) {
  const bytes = tensor.storage && tensor.storage.bytes;
  if (!bytes) return null;
  const [Ctor, per] = arrayOf(tensor.dtype);
  let extent = 0;
  if (!tensor.shape.includes(0)) {
    extent = 1;
    for (let d = 0; d < tensor.shape.length; d++) extent += (tensor.shape[d] - 1) * tensor.stride[d];
  }
  const start = tensor.storageOffset * tensor.itemsize;
  const length = extent * per;
  if (start + length * Ctor.BYTES_PER_ELEMENT > bytes.byteLength) {
    throw new Error(`ptload: tensor view (offset ${tensor.storageOffset}, extent ${extent}) runs past its storage ${tensor.storage.key}`);
  }
  if (length === 0 && (bytes.byteOffset + start) % Ctor.BYTES_PER_ELEMENT !== 0) return new Ctor(0);
  return new Ctor(bytes.buffer, bytes.byteOffset + start, length);
}

/** The public API over a wasm-bindgen module (`getBindings` returns it, or a promise of it). */
export function createApi(getBindings) {
  /** Loads a checkpoint (see index.d.ts for the input kinds and options). */
  async function load(input, options) {
    const opts = normalizeOptions(options);
    throwIfAborted(opts.signal);
    const progress = new Progress(opts.onProgress);
    const source = await openInput(input, opts.name, progress);
    progress.total = source.size;
    const { Planner } = await getBindings();
    const planner = new Planner(source.name, source.size, opts.planner);
    let gpu = null;
    let storages = [];
    try {
      await plan(planner, source, opts.callback, progress);
      const planned = planner.storages();
      storages = planned.map((s) => new Storage(s));
      const all = [];
      const tree = planner.tree(
        (meta) => {
          const t = new Tensor(meta, meta.storage === null ? null : storages[meta.storage]);
          all.push(t);
          return t;
        },
        (index) => storages[index],
      );
      throwIfAborted(opts.signal);
      await place(planner, source, planned, storages, all, tree.byteOrder, progress, opts.signal);
      if (planned.some((s) => s.device === "webgpu")) {
        gpu = new WebGpuPlacement(opts.device, source.name);
        await placeOnGpu(gpu, planner, source, planned, storages, all, tree.byteOrder, progress, opts);
        await gpu.finish();
      }
      progress.done();
      return new Checkpoint(tree, storages, tree.tensors);
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

  return { load, Checkpoint, Tensor, Storage };
}

/** Reads each storage once: a view of the caller's buffer when its record is stored, aligned
 * and in host byte order; a copy (inflated, swapped or realigned) otherwise. */
async function place(planner, source, planned, storages, tensors, byteOrder, progress, signal) {
  // The alignment each storage needs: the widest TypedArray element viewing it.
  const align = new Map();
  for (const t of tensors) {
    if (!t.storage) continue;
    const need = arrayOf(t.dtype)[0].BYTES_PER_ELEMENT;
    align.set(t.storage, Math.max(align.get(t.storage) ?? 1, need));
  }
  const stored = source instanceof BlobSource ? await readStored(source, planned, progress) : null;
  for (let i = 0; i < planned.length; i++) {
    const s = planned[i];
    const r = s.record;
    if (!r || s.device !== "cpu") continue;
    throwIfAborted(signal);
    let bytes;
    let owned;
    if (r.deflated) {
      ({ bytes } = await source.read(r.dataOffset, r.storedLen));
      progress.add(r.storedLen);
      bytes = planner.inflate(i, bytes);
      owned = true;
    } else if (stored) {
      ({ bytes, fresh: owned } = stored.get(i));
    } else {
      ({ bytes, fresh: owned } = await source.read(r.dataOffset, r.size));
      progress.add(r.size);
    }
    if (byteOrder !== HOST_ORDER && s.swapUnit > 1) {
      if (!owned) bytes = bytes.slice();
      swapInPlace(bytes, s.swapUnit);
      owned = true;
    }
    if (bytes.byteOffset % (align.get(storages[i]) ?? 1) !== 0) {
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
    throw signal.reason ?? new Error("ptload: the load was aborted");
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
        throw new Error(`${source.name}: record ${record.name} inflates to more than its ${record.size} bytes`);
      }
      await f(value, true);
    }
  } catch (e) {
    await feed.catch(() => {});
    throw e instanceof TypeError && !String(e.message).startsWith("ptload")
      ? new Error(`${source.name}: record ${record.name}: invalid deflate data (${e.message})`)
      : e;
  }
  await feed;
}

/** Puts every storage mapped to `webgpu` in its own GPUBuffer, straight from the input: byte
 * swapping (big-endian files) happens chunk by chunk in JS, and `dtype` conversion on the GPU. */
async function placeOnGpu(gpu, planner, source, planned, storages, tensors, byteOrder, progress, opts) {
  const views = new Map();
  for (const t of tensors) {
    if (!t.storage) continue;
    if (!views.has(t.storage)) views.set(t.storage, []);
    views.get(t.storage).push(t);
  }
  for (let i = 0; i < planned.length; i++) {
    const s = planned[i];
    const storage = storages[i];
    if (s.device !== "webgpu") continue;
    throwIfAborted(opts.signal);
    const nbytes = s.numel * s.itemsize;
    const writer = gpu.begin(s.key, nbytes);
    if (s.record) {
      const unit = byteOrder !== HOST_ORDER && s.swapUnit > 1 ? s.swapUnit : 1;
      const carry = new Uint8Array(Math.max(unit - 1, 0));
      let carried = 0;
      await recordChunks(planner, source, i, s.record, progress, opts.signal, async (bytes) => {
        if (unit === 1) return writer.put(bytes);
        // Swap whole elements: an element split across chunks waits for its other half.
        const joined = new Uint8Array(carried + bytes.length);
        joined.set(carry.subarray(0, carried));
        joined.set(bytes, carried);
        const whole = joined.length - (joined.length % unit);
        carried = joined.length - whole;
        carry.set(joined.subarray(whole));
        const out = joined.subarray(0, whole);
        swapInPlace(out, unit);
        return writer.put(out);
      });
    }
    let buffer = writer.end();
    let dtype = s.dtype;
    const seen = views.get(storage) ?? [];
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
  for (const t of tensors) {
    if (t.storage && t.storage.buffer) t.data = { buffer: t.storage.buffer, byteOffset: t.storageOffset * t.itemsize };
  }
}
