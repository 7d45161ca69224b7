// Type declarations of the ptload npm package (the same for `import`, `require` and browsers).
// WebGPU types (GPUDevice, GPUBuffer) come from @webgpu/types, a dependency of the package.
/// <reference types="@webgpu/types" />

/** Torch's dtype names, without `torch.`. */
export type Dtype =
  | "float64" | "float32" | "float16" | "bfloat16"
  | "float8_e4m3fn" | "float8_e5m2" | "float8_e4m3fnuz" | "float8_e5m2fnuz" | "float8_e8m0fnu"
  | "float4_e2m1fn_x2"
  | "complex32" | "bcomplex32" | "complex64" | "complex128"
  | "int8" | "int16" | "int32" | "int64"
  | "uint8" | "uint16" | "uint32" | "uint64"
  | "bool"
  | "qint8" | "quint8" | "qint32" | "quint4x2" | "quint2x4"
  | "bits8" | "bits16" | "bits1x8" | "bits2x4" | "bits4x2";

/** The TypedArray a tensor's `data` has: float16/bfloat16 (and complex32/bcomplex32, bits16)
 * as raw bits in a Uint16Array; bool, float8 and packed sub-byte types as a Uint8Array;
 * complex types as their real and imaginary halves interleaved. */
export type TensorData =
  | Float64Array | Float32Array
  | Int8Array | Int16Array | Int32Array | BigInt64Array
  | Uint8Array | Uint16Array | Uint32Array | BigUint64Array;

/** Where a storage was placed: host memory, a GPUBuffer of the `device` option, or nowhere
 * (`meta` reads nothing). */
export type Device = "cpu" | "webgpu" | "meta";

/** A WebGPU tensor's `data`: its storage's GPUBuffer (usage STORAGE | COPY_SRC | COPY_DST,
 * size padded to 4 bytes, shared by every view of the storage) and where its first element is. */
export interface WebGpuData {
  readonly buffer: GPUBuffer;
  /** `storageOffset × itemsize`. */
  readonly byteOffset: number;
}

/** What a `mapLocation` function is given for each storage (torch passes a CPU storage). */
export interface StorageInfo {
  readonly key: string;
  readonly dtype: Dtype;
  readonly numel: number;
  readonly nbytes: number;
  /** The device tag it was saved with: `"cpu"`, `"cuda:0"`, … */
  readonly location: string;
  readonly device: "cpu";
}

/**
 * torch.load's `map_location`:
 * - a device string (`"cpu"`, `"meta"`, `"webgpu"` with a `device`; others fail with torch's
 *   message),
 * - a `{ from: to }` object or `Map` of tags (a tag not listed is kept),
 * - a function called once per storage, in order: it returns a device string, the storage it
 *   was given (stay on the CPU, as torch's `lambda s, loc: s`), or `undefined` (the saved tag).
 */
export type MapLocation =
  | string
  | Record<string, string>
  | Map<string, string>
  | ((storage: StorageInfo, location: string) => string | StorageInfo | undefined | null);

export interface Progress {
  /** Bytes read (or downloaded, for a Response) so far; the last call has `loadedBytes === totalBytes`. */
  loadedBytes: number;
  /** The input's size (undefined while a Response of unknown length downloads). */
  totalBytes: number | undefined;
}

/** torch.load's `encoding` names (Python's codec names, any case). */
export type Encoding =
  | "utf-8" | "utf8" | "ascii" | "latin1" | "latin-1" | "iso-8859-1" | "bytes"
  | (string & {});

export interface LoadOptions {
  /** Default: each storage goes where its saved tag says (torch's `map_location=None`). */
  mapLocation?: MapLocation | null;
  /** Refuse globals outside torch's weights-only allowlist (default true, as torch ≥ 2.6).
   * With false they load as inert `{ __class__, args, state }` objects; nothing is ever run. */
  weightsOnly?: boolean;
  /** How Python 2 strings decode (torch.load's `encoding`): "utf-8" (default), "ascii" (a
   * non-ASCII byte is an error), "latin1" or "bytes"; Python's other names for them (case
   * insensitive: "utf8", "latin-1", "iso-8859-1", …) are accepted too, any other is a TypeError. */
  encoding?: Encoding;
  /** Called as bytes are read. */
  onProgress?: (progress: Progress) => void;
  /** The name used in error messages (default: the File's name, the Response's URL, or `<memory>`). */
  name?: string;
  /** The GPUDevice that storages mapped to `"webgpu"` go to (each one its own GPUBuffer, written
   * straight from the input: the bytes never enter wasm memory). A storage larger than its
   * `limits.maxBufferSize` is refused: request a larger limit when creating the device. */
  device?: GPUDevice;
  /** Convert floating storages placed on WebGPU (bfloat16, float16, float32, float64) to this
   * dtype on the GPU, bit-exactly as torch's `.to(dtype)`. Needs `device`. */
  dtype?: "float16" | "float32";
  /** Cancels the load: it rejects with the signal's reason and destroys every GPUBuffer it made. */
  signal?: AbortSignal;
}

/** Anything `load` reads: bytes in memory (viewed, never copied), a Blob or File (read by
 * slices), a fetch Response (read once, as it streams), or where to find the file: in Node a
 * path or a `file:` URL (read by slices with positioned reads, whatever its size) and another
 * URL is fetched; in browsers a string or URL is fetched. */
export type Input = Uint8Array | ArrayBuffer | ArrayBufferView | Blob | Response | string | URL | Folder;

/** A distributed checkpoint (`torch.distributed.checkpoint`): its folder's files by name,
 * `.metadata` and the `__<rank>_<n>.distcp` files. Loaded whole, as one checkpoint with every
 * tensor at its full size (`format` "dcp"); `mapLocation` may not be a function. In Node, the
 * folder's path does the same. */
export type Folder =
  | Map<string, Blob | ArrayBuffer | ArrayBufferView>
  | { [file: string]: Blob | ArrayBuffer | ArrayBufferView };

/** One storage: the bytes that one or more tensors view. */
export declare class Storage {
  private constructor();
  readonly key: string;
  /** Its dtype (uint8 for untyped storages). */
  readonly dtype: Dtype;
  readonly numel: number;
  readonly nbytes: number;
  /** The device tag it was saved with. */
  readonly location: string;
  readonly device: Device;
  /** Its bytes in host byte order on `cpu`, else null. */
  readonly bytes: Uint8Array | null;
  /** Its GPUBuffer on `webgpu`, else null. Destroy it when done (`buffer.destroy()`). */
  readonly buffer: GPUBuffer | null;
  /** The GPUDevice holding `buffer`, else null. */
  readonly gpuDevice: GPUDevice | null;
  /** Whether `bytes` is a view of the caller's buffer (no copy was made). */
  readonly zeroCopy: boolean;
}

export declare class Tensor {
  private constructor();
  readonly dtype: Dtype;
  readonly shape: number[];
  /** In elements. */
  readonly stride: number[];
  /** In elements, into the storage. */
  readonly storageOffset: number;
  readonly requiresGrad: boolean;
  /** `"parameter"` for an `nn.Parameter`. */
  readonly kind: "tensor" | "parameter";
  /** torch's conjugate and negative bits; `data` holds the values without them applied. */
  readonly conj: boolean;
  readonly neg: boolean;
  /** Quantized tensors: the quantizer parameters as saved (`[qscheme, scale, zero_point]`, …). */
  readonly quantizer?: unknown;
  /** Python attributes saved with the tensor. */
  readonly attributes?: unknown;
  /** Bytes per element. */
  readonly itemsize: number;
  readonly numel: number;
  readonly isContiguous: boolean;
  readonly device: Device;
  /** The storage it views, shared by all its views (null for meta tensors saved without one). */
  readonly storage: Storage | null;
  /**
   * The elements from the first one (`storageOffset` applied) through the last one the tensor
   * reaches, as its natural TypedArray; element `[i, j, …]` is at `i*stride[0] + j*stride[1] + …`
   * (×2 for complex dtypes). For the CPU this is a view of the input buffer whenever the record
   * is stored, aligned and little-endian; a copy otherwise. On `webgpu`, `{ buffer, byteOffset }`.
   * null on `meta`.
   */
  readonly data: TensorData | WebGpuData | null;
  /** The elements in C order, little-endian (bool as one byte 0/1). A view sharing `data`'s
   * memory when the tensor is contiguous on the CPU, else a new buffer (read back from the GPU
   * on `webgpu`). Rejects on `meta`. */
  contiguousBytes(): Promise<Uint8Array>;
}

/** An object the pickle describes but ptload does not interpret (nothing is run). */
export interface InertObject {
  __class__: string;
  args: Value[];
  state: Value;
  listItems?: Value[];
  dictItems?: Map<Value, Value>;
}

/** A global saved by name, such as the dtype `torch.float32`. */
export interface GlobalRef {
  __global__: string;
}

/** The checkpoint tree: dicts with string keys are plain objects (other dicts are Maps; an
 * OrderedDict's `_metadata` is a non-enumerable property), lists and tuples are arrays, ints
 * beyond ±(2^53 − 1) are BigInts, bytes are Uint8Arrays, sets are Sets. */
export type Value =
  | null | boolean | number | bigint | string | Uint8Array
  | Value[] | { [key: string]: Value } | Map<Value, Value> | Set<Value>
  | Tensor | Storage | InertObject | GlobalRef;

export declare class Checkpoint {
  private constructor();
  readonly format: "zip" | "legacy" | "tar" | "torchscript" | "dcp";
  /** The byte order of the file's tensor data (loaded data are in host order). */
  readonly byteOrder: "little" | "big";
  /** What torch.load would have returned. */
  readonly root: Value;
  /** TorchScript archives: the tuple of `constants.pkl` (its tensors are listed as `constants.<i>`). */
  readonly constants?: Value;
  /** Storages in order of first reference. */
  readonly storages: Storage[];
  /** Every tensor with its `.`-joined path (as state_dict keys), in file order. A tensor
   * reachable at two paths is listed at both (as one Tensor object, the one in `root`). */
  tensors(): Array<[string, Tensor]>;
  /** The tensor at `path`. */
  tensor(path: string): Tensor | undefined;
  /** Its tensors as the bytes of a `.safetensors` file, written by the `safetensors` crate
   * (views as contiguous copies). Rejects, naming the tensor, on a dtype safetensors cannot store. */
  toSafetensors(): Promise<Uint8Array>;
  /** Its tensors as the bytes of a `.pt` file (torch.save's zip format, loadable by
   * `torch.load(weights_only=True)`). */
  toPt(): Promise<Uint8Array>;
}

/** The native loader's error kinds (its `ErrorKind` variants). */
export type PtloadErrorKind =
  | "Io" | "NotACheckpoint" | "Zip" | "MissingRecord" | "UnsupportedVersion" | "UnknownByteOrder"
  | "Pickle" | "WeightsOnly" | "StorageSize" | "Record" | "InvalidTensor" | "Unsupported"
  | "NeedBytes" | "LimitExceeded" | "Dcp" | "Index" | "Location" | "Placement" | "Cancelled";

/** Why a checkpoint did not load. `message` is the native loader's, word for word
 * (`<file>: <what is wrong>`). Bad arguments are TypeErrors instead. */
export declare class PtloadError extends Error {
  private constructor();
  readonly name: "PtloadError";
  /** What went wrong, as the native `ErrorKind` variant's name. */
  readonly kind: PtloadErrorKind;
  /** The file it is about: the `name` option, the File's name, the Response's URL, or `<memory>`. */
  readonly file: string | undefined;
  /** The byte offset of the error, when known: the one the message names (in the file; within
   * the pickle record for "Pickle"), or for a weights-only refusal or a pickle limit, the
   * offending opcode's offset within the pickle record. */
  readonly offset: number | undefined;
}

/** A tensor to save: a loaded Tensor, or its dtype, shape and C-order elements. */
export type SaveTensor = Tensor | { dtype: Dtype; shape: number[]; data: ArrayBufferView | ArrayBuffer };

/** Options of `save`. */
export interface SaveOptions {
  /** "pt" (default: torch.save's zip format) or "safetensors". */
  format?: "pt" | "safetensors";
}

/** The bytes of a file holding `tensors`, written by the crate's writers (as `ptload convert`). */
export declare function save(
  tensors: Map<string, SaveTensor> | Array<[string, SaveTensor]> | { [name: string]: SaveTensor },
  options?: SaveOptions,
): Promise<Uint8Array>;

/**
 * Loads a checkpoint. Rejects with a {@link PtloadError} carrying the native loader's message
 * (`<name>: <what is wrong>`), with a TypeError for bad arguments (an unknown option name, a
 * wrong type), or with what a mapLocation function threw.
 */
export declare function load(input: Input, options?: LoadOptions): Promise<Checkpoint>;

/** Browsers: fetches and instantiates the wasm module from `moduleOrPath` (default: next to the
 * package's files). Optional: load() does it on first use. A no-op in Node. */
export declare function init(moduleOrPath?: string | URL | Response | ArrayBuffer | Uint8Array | object): Promise<unknown>;
