// The writers of the npm package: `save(tensors, { format })` and `ckpt.toSafetensors()` /
// `ckpt.toPt()`. The files are built in wasm by the crate's own writers (src/wasm/write.rs:
// the `safetensors` crate, torch.save's zip format), from the tensors' contiguous bytes.
// Like api.mjs this file imports nothing (build-npm turns its exports into a CommonJS module).

/** Bytes of a TypedArray / DataView / ArrayBuffer / Uint8Array, as a Uint8Array view. */
function bytesOf(data, name) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError(`save: tensor '${name}': data must be a TypedArray or an ArrayBuffer`);
}

/** [name, value] pairs of a Map, an array of pairs, or a plain object. */
function entriesOf(tensors) {
  if (tensors instanceof Map || Array.isArray(tensors)) return [...tensors];
  if (tensors && typeof tensors === "object") return Object.entries(tensors);
  throw new TypeError("save: tensors must be a Map, an array of [name, tensor] or an object");
}

/** One `[name, dtype, shape, bytes]` entry for the wasm writer. */
async function entryOf(name, t) {
  if (typeof t.contiguousBytes === "function") {
    return [name, t.dtype, [...t.shape], await t.contiguousBytes()];
  }
  if (!t || typeof t.dtype !== "string" || !Array.isArray(t.shape)) {
    throw new TypeError(`save: tensor '${name}' needs { dtype, shape, data }`);
  }
  return [name, t.dtype, [...t.shape], bytesOf(t.data, name)];
}

/** The writers over a wasm-bindgen module (`getBindings` returns it, or a promise of it);
 * adds `toSafetensors()` and `toPt()` to `Checkpoint`. */
export function createSave(getBindings, Checkpoint) {
  async function write(pairs, format, sourceName) {
    const entries = [];
    for (const [name, t] of pairs) entries.push(await entryOf(String(name), t));
    const { writeTensors } = await getBindings();
    return writeTensors(entries, format, sourceName);
  }

  /** The bytes of a file holding `tensors` (a Map, [name, tensor] pairs or an object; each a
   * ptload Tensor or `{ dtype, shape, data }` with data in C order): torch.save's format
   * (default, `format: "pt"`, loadable by torch.load(weights_only=True)) or `"safetensors"`. */
  async function save(tensors, options = {}) {
    const format = options.format ?? "pt";
    return write(entriesOf(tensors), format, options.sourceName);
  }

  if (Checkpoint) {
    /** The checkpoint's tensors as the bytes of a .safetensors file (views as contiguous copies;
     * dtypes safetensors cannot store are an error naming the tensor). */
    Checkpoint.prototype.toSafetensors = function toSafetensors() {
      return write(this.tensors(), "safetensors", this.name);
    };
    /** The checkpoint's tensors as the bytes of a .pt file (torch.save's zip format; each
     * tensor as a contiguous copy over a storage of its own). */
    Checkpoint.prototype.toPt = function toPt() {
      return write(this.tensors(), "pt", this.name);
    };
  }
  return { save };
}
