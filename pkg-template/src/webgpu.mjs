// WebGPU placement for the npm package: one GPUBuffer per storage, filled chunk by chunk with
// `queue.writeBuffer` (the bytes never enter wasm memory), read back for `contiguousBytes()`,
// and the optional float conversion on the GPU (the WGSL in src/shaders/convert.wgsl, inlined
// by scripts/build-npm). The load loop in api.mjs drives it through `begin / put / finish /
// abort`, as it drives CPU placement.

/** GPUBufferUsage and GPUMapMode bits (the globals are not defined in every JS runtime). */
const MAP_READ = 0x0001;
const COPY_SRC = 0x0004;
const COPY_DST = 0x0008;
const UNIFORM = 0x0040;
const STORAGE = 0x0080;
const MAP_MODE_READ = 0x0001;

/** The usage of every storage buffer: bound by compute shaders, copied from and to. */
export const STORAGE_USAGE = STORAGE | COPY_SRC | COPY_DST;

/** Bytes written between waits for the queue, so what the queue stages stays bounded. */
const FLUSH_BYTES = 64 << 20;

/** WebGPU's copy rule: offsets and sizes are multiples of 4 bytes. */
function pad4(n) {
  return Math.ceil(n / 4) * 4;
}

/** Whether `x` looks like a GPUDevice. */
export function isGpuDevice(x) {
  return typeof x === "object" && x !== null && typeof x.createBuffer === "function" &&
    typeof x.queue === "object" && x.queue !== null && typeof x.queue.writeBuffer === "function";
}

/** The dtypes `dtype` converts, and their codes in the shader. */
const FLOAT_SOURCES = { float16: [0, 2], bfloat16: [1, 2], float32: [2, 4], float64: [3, 8] };
const FLOAT_TARGETS = { float16: [0, 2], float32: [1, 4] };

/** The storages of one load placed on one GPUDevice. Everything it creates is destroyed by
 * `abort()`, so a failed or cancelled load leaves no buffer alive. */
export class WebGpuPlacement {
  /** `fail(message)` makes the error a failed placement throws (the package's PtloadError). */
  constructor(device, fileName, fail = (message) => new Error(message)) {
    this.device = device;
    this.fileName = fileName;
    this.fail = fail;
    this.created = new Set();
    this.unflushed = 0;
    this.pipeline = null;
    device.pushErrorScope("out-of-memory");
    device.pushErrorScope("validation");
    this.scopes = 2;
  }

  /** A buffer for storage `key` of `nbytes` bytes (padded to 4), checked against the device's
   * maxBufferSize. */
  begin(key, nbytes) {
    const size = pad4(nbytes);
    const limit = this.device.limits.maxBufferSize;
    if (size > limit) {
      throw this.fail(
        `${this.fileName}: storage ${key} holds ${nbytes} bytes, more than this GPUDevice's ` +
        `maxBufferSize (${limit}); request a larger limit with adapter.requestDevice({ ` +
        `requiredLimits: { maxBufferSize: adapter.limits.maxBufferSize } })`,
      );
    }
    const buffer = this.device.createBuffer({ size, usage: STORAGE_USAGE, label: key });
    this.created.add(buffer);
    return new BufferWriter(this, buffer, nbytes);
  }

  /** Waits for the queue when enough has been written since the last wait. */
  async written(n) {
    this.unflushed += n;
    if (this.unflushed >= FLUSH_BYTES) {
      this.unflushed = 0;
      await this.device.queue.onSubmittedWorkDone();
    }
  }

  /** Converts a placed float storage to `target` ("float16" | "float32") with a compute shader;
   * returns the new buffer (the old one is destroyed), or null when `dtype` is not converted. */
  convert(buffer, dtype, numel, target) {
    const from = FLOAT_SOURCES[dtype];
    const to = FLOAT_TARGETS[target];
    if (!from || !to || dtype === target) return null;
    const [source, srcSize] = from;
    const [mode, dstSize] = to;
    const device = this.device;
    const out = device.createBuffer({ size: pad4(numel * dstSize), usage: STORAGE_USAGE, label: buffer.label });
    this.created.add(out);
    const pipeline = this.convertPipeline();
    // Windows of whole elements whose byte offsets keep the binding alignment (256) on both sides
    // and whose bindings fit maxStorageBufferBindingSize.
    const window = Math.max(256, Math.floor(device.limits.maxStorageBufferBindingSize / 8 / 256) * 256);
    const encoder = device.createCommandEncoder();
    const uniforms = [];
    for (let first = 0; first < numel; first += window) {
      const count = Math.min(window, numel - first);
      const params = device.createBuffer({ size: 8, usage: UNIFORM | COPY_DST });
      uniforms.push(params);
      device.queue.writeBuffer(params, 0, new Uint32Array([source * 2 + mode, count]));
      const srcOffset = first * srcSize;
      const dstOffset = first * dstSize;
      const group = device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: { buffer, offset: srcOffset, size: Math.min(pad4(count * srcSize), buffer.size - srcOffset) } },
          { binding: 1, resource: { buffer: out, offset: dstOffset, size: Math.min(pad4(count * dstSize), out.size - dstOffset) } },
          { binding: 2, resource: { buffer: params } },
        ],
      });
      const invocations = mode === 0 ? Math.ceil(count / 2) : count;
      const groups = Math.ceil(invocations / 64);
      const x = Math.min(groups, 65535);
      const pass = encoder.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(x, Math.ceil(groups / x));
      pass.end();
    }
    device.queue.submit([encoder.finish()]);
    for (const u of uniforms) u.destroy();
    buffer.destroy();
    this.created.delete(buffer);
    return out;
  }

  convertPipeline() {
    if (!this.pipeline) {
      const module = this.device.createShaderModule({ code: CONVERT_WGSL, label: "ptload convert" });
      this.pipeline = this.device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: "ptload convert",
      });
    }
    return this.pipeline;
  }

  /** Waits for the GPU and surfaces any error it reported for this load. */
  async finish() {
    await this.device.queue.onSubmittedWorkDone();
    const errors = [];
    while (this.scopes > 0) {
      this.scopes--;
      const e = await this.device.popErrorScope();
      if (e) errors.push(e);
    }
    if (errors.length) {
      throw this.fail(`${this.fileName}: WebGPU placement failed: ${errors.map((e) => e.message).join("; ")}`);
    }
  }

  /** Destroys every buffer this load created (after a failure or cancellation). */
  async abort() {
    for (const b of this.created) b.destroy();
    this.created.clear();
    while (this.scopes > 0) {
      this.scopes--;
      try {
        await this.device.popErrorScope();
      } catch {
        // The device may be lost: nothing left to pop.
      }
    }
  }
}

/** Writes one storage's bytes in order, in chunks of any length: WebGPU wants 4-byte multiples,
 * so up to 3 bytes wait for the next chunk (or are padded with zeros at the end). */
class BufferWriter {
  constructor(placement, buffer, nbytes) {
    this.placement = placement;
    this.buffer = buffer;
    this.nbytes = nbytes;
    this.at = 0;
    this.carry = new Uint8Array(4);
    this.carried = 0;
  }

  /** Queues `chunk` (a Uint8Array; not kept after the call) for the next bytes of the storage. */
  async put(chunk) {
    const queue = this.placement.device.queue;
    let from = 0;
    if (this.carried > 0) {
      from = Math.min(4 - this.carried, chunk.length);
      this.carry.set(chunk.subarray(0, from), this.carried);
      this.carried += from;
      if (this.carried < 4) return;
      queue.writeBuffer(this.buffer, this.at, this.carry, 0, 4);
      this.at += 4;
      this.carried = 0;
    }
    const whole = (chunk.length - from) & ~3;
    if (whole > 0) {
      queue.writeBuffer(this.buffer, this.at, chunk, from, whole);
      this.at += whole;
    }
    const rest = chunk.length - from - whole;
    if (rest > 0) {
      this.carry.set(chunk.subarray(from + whole), 0);
      this.carried = rest;
    }
    await this.placement.written(chunk.length);
  }

  /** Writes what is left; checks the storage got exactly its bytes. */
  end() {
    const total = this.at + this.carried;
    if (total !== this.nbytes) {
      throw this.placement.fail(`${this.placement.fileName}: storage ${this.buffer.label} got ${total} bytes, expected ${this.nbytes}`);
    }
    if (this.carried > 0) {
      this.carry.fill(0, this.carried);
      this.placement.device.queue.writeBuffer(this.buffer, this.at, this.carry, 0, 4);
      this.at += 4;
      this.carried = 0;
    }
    return this.buffer;
  }
}

/** Reads `length` bytes at `offset` of a GPUBuffer back into host memory. */
export async function readBack(device, buffer, offset, length) {
  if (length === 0) return new Uint8Array(0);
  const start = offset - (offset % 4);
  const size = pad4(offset + length - start);
  const staging = device.createBuffer({ size, usage: MAP_READ | COPY_DST, label: "ptload read-back" });
  try {
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(buffer, start, staging, 0, size);
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(MAP_MODE_READ);
    const mapped = new Uint8Array(staging.getMappedRange());
    const out = mapped.slice(offset - start, offset - start + length);
    staging.unmap();
    return out;
  } finally {
    staging.destroy();
  }
}

/** The conversion shader's source (src/shaders/convert.wgsl), inlined by scripts/build-npm. */
const CONVERT_WGSL = "__CONVERT_WGSL__";
