// Tensor elements as numbers for the viewer: decoding the C-order little-endian bytes of
// `Tensor.contiguousBytes()` into a Float64Array (float16, bfloat16 and the float8 formats
// decoded bit-exactly as torch's `.to(torch.float64)`), statistics over the finite elements and
// a histogram (chunk by chunk), and number formatting. No DOM here: tests/browser/web.test.mjs
// imports it in the page.

/** The value of every bit pattern of a small float format (sign, `e` exponent bits, `m`
 * mantissa bits, exponent bias), with its own rules for the top exponent. */
function table(bits, e, m, bias, special) {
  const out = new Float64Array(1 << bits);
  for (let u = 0; u < out.length; u++) {
    const sign = u >> (e + m) & 1 ? -1 : 1;
    const exp = u >> m & ((1 << e) - 1);
    const man = u & ((1 << m) - 1);
    const s = special(u, exp, man, sign);
    if (s !== undefined) out[u] = s;
    else if (exp === 0) out[u] = sign * man * 2 ** (1 - bias - m);
    else out[u] = sign * (1 + man / 2 ** m) * 2 ** (exp - bias);
  }
  return out;
}

const tables = new Map();

/** The decoding table of a 16- or 8-bit float dtype (built on first use). */
function tableOf(dtype) {
  if (tables.has(dtype)) return tables.get(dtype);
  const ieee = (top) => (u, exp, man, sign) => (exp === top ? (man ? NaN : sign * Infinity) : undefined);
  const fnuz = (u) => (u === 0x80 ? NaN : undefined); // one NaN, no infinities, no -0
  let t;
  switch (dtype) {
    case "float16": t = table(16, 5, 10, 15, ieee(31)); break;
    case "float8_e5m2": t = table(8, 5, 2, 15, ieee(31)); break;
    case "float8_e4m3fn": t = table(8, 4, 3, 7, (u) => ((u & 0x7f) === 0x7f ? NaN : undefined)); break;
    case "float8_e4m3fnuz": t = table(8, 4, 3, 8, fnuz); break;
    case "float8_e5m2fnuz": t = table(8, 5, 2, 16, fnuz); break;
    case "float8_e8m0fnu": {
      // Exponent only: 2^(u - 127); 0xff is NaN.
      t = new Float64Array(256);
      for (let u = 0; u < 256; u++) t[u] = u === 255 ? NaN : 2 ** (u - 127);
      break;
    }
    default: return undefined;
  }
  tables.set(dtype, t);
  return t;
}

/** Dtypes whose elements decode to real numbers. */
const DIRECT = {
  float64: Float64Array, float32: Float32Array, int8: Int8Array, uint8: Uint8Array,
  int16: Int16Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
  int64: BigInt64Array, uint64: BigUint64Array, bool: Uint8Array,
  // Quantized tensors: the stored integers (not dequantized).
  qint8: Int8Array, quint8: Uint8Array, qint32: Int32Array,
};

/** Whether `decode` handles `dtype`; else a reason why not. */
export function decodable(dtype) {
  if (DIRECT[dtype] || dtype === "bfloat16" || tableOf(dtype)) return true;
  if (dtype.startsWith("complex") || dtype === "bcomplex32") return "complex elements have no order: no statistics";
  return `no statistics for ${dtype} (packed or opaque bits)`;
}

/** An aligned copy of `bytes` when a TypedArray of `size`-byte elements cannot view it. */
function aligned(bytes, size) {
  return bytes.byteOffset % size === 0 ? bytes : bytes.slice();
}

/** The elements of C-order little-endian `bytes` of `dtype` as a Float64Array (int64 values
 * beyond 2^53 rounded to the nearest double). */
export function decode(bytes, dtype) {
  const t = tableOf(dtype);
  if (t) {
    if (t.length === 256) {
      const out = new Float64Array(bytes.length);
      for (let i = 0; i < bytes.length; i++) out[i] = t[bytes[i]];
      return out;
    }
    const u16 = new Uint16Array(aligned(bytes, 2).buffer, aligned(bytes, 2).byteOffset, bytes.length >> 1);
    const out = new Float64Array(u16.length);
    for (let i = 0; i < u16.length; i++) out[i] = t[u16[i]];
    return out;
  }
  if (dtype === "bfloat16") {
    const src = aligned(bytes, 2);
    const u16 = new Uint16Array(src.buffer, src.byteOffset, src.length >> 1);
    const word = new Uint32Array(1);
    const f = new Float32Array(word.buffer);
    const out = new Float64Array(u16.length);
    for (let i = 0; i < u16.length; i++) {
      word[0] = u16[i] << 16;
      out[i] = f[0];
    }
    return out;
  }
  const Ctor = DIRECT[dtype];
  if (!Ctor) throw new Error(`cannot decode ${dtype}`);
  const size = Ctor.BYTES_PER_ELEMENT;
  const src = aligned(bytes, size);
  const view = new Ctor(src.buffer, src.byteOffset, Math.floor(src.length / size));
  const out = new Float64Array(view.length);
  if (Ctor === BigInt64Array || Ctor === BigUint64Array) {
    for (let i = 0; i < view.length; i++) out[i] = Number(view[i]);
  } else if (dtype === "bool") {
    for (let i = 0; i < view.length; i++) out[i] = view[i] ? 1 : 0;
  } else {
    out.set(view);
  }
  return out;
}

/** Bytes per element of a dtype `decode` handles. */
function itemsize(dtype) {
  const t = tableOf(dtype);
  if (t) return t.length === 256 ? 1 : 2;
  if (dtype === "bfloat16") return 2;
  return DIRECT[dtype].BYTES_PER_ELEMENT;
}

/** Elements decoded at a time by `summarize` (so a big tensor never needs a Float64Array of
 * all its elements). */
const CHUNK = 1 << 20;

/** Statistics, a histogram and the `first` elements of C-order little-endian `bytes` of
 * `dtype`, decoding `chunk` elements at a time in two passes; `pause` (optional, awaited between
 * chunks) lets the page stay responsive. Statistics are over the finite elements: count, min, max, mean, std (correction 1, as
 * torch's default; null below 2 elements), and counts of NaN, +Inf and -Inf; the histogram has
 * `bins` equal-width bins over [min, max]. */
export async function summarize(bytes, dtype, { first = 32, bins = 60, chunk = CHUNK, pause } = {}) {
  const size = itemsize(dtype);
  const n = Math.floor(bytes.length / size);
  const chunks = function* () {
    for (let at = 0; at < n; at += chunk) yield decode(bytes.subarray(at * size, Math.min(n, at + chunk) * size), dtype);
  };
  let count = 0;
  let nan = 0;
  let posinf = 0;
  let neginf = 0;
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let c = 0;
  let head = null;
  for (const values of chunks()) {
    head ??= values.slice(0, first);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v !== v) { nan++; continue; }
      if (v === Infinity) { posinf++; continue; }
      if (v === -Infinity) { neginf++; continue; }
      count++;
      if (v < min) min = v;
      if (v > max) max = v;
      const y = v - c;
      const t = sum + y;
      c = (t - sum) - y;
      sum = t;
    }
    if (pause) await pause();
  }
  const mean = count ? sum / count : null;
  const counts = new Array(bins).fill(0);
  let sq = 0;
  let k = 0;
  if (count) {
    const width = max - min;
    for (const values of chunks()) {
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (!Number.isFinite(v)) continue;
        const y = (v - mean) * (v - mean) - k;
        const t = sq + y;
        k = (t - sq) - y;
        sq = t;
        counts[width > 0 ? Math.min(bins - 1, Math.floor(((v - min) / width) * bins)) : bins >> 1]++;
      }
      if (pause) await pause();
    }
  }
  return {
    stats: {
      count, min: count ? min : null, max: count ? max : null, mean, std: count > 1 ? Math.sqrt(sq / (count - 1)) : null,
      nan, posinf, neginf,
    },
    counts,
    first: head ?? new Float64Array(0),
    length: n,
  };
}

/** A number as people read it: up to 6 significant digits, exponent form when very large or small. */
export function formatNumber(v) {
  if (v === null || v === undefined) return "—";
  if (Number.isNaN(v)) return "nan";
  if (v === Infinity) return "inf";
  if (v === -Infinity) return "-inf";
  if (v === 0) return Object.is(v, -0) ? "-0" : "0";
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-4) return v.toExponential(4).replace(/\.?0+e/, "e");
  return String(Number(v.toPrecision(6)));
}

/** Bytes as people read them (binary units). */
export function formatBytes(n) {
  if (n === undefined || n === null) return "?";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[u]}`;
}
