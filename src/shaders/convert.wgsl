// Floating-point storage conversion on the GPU, bit-exact with torch's CPU `.to(dtype)`:
// bfloat16 / float32 / float64 -> float16 / float32, round to nearest even, subnormals kept,
// overflow to infinity. WGSL has neither bfloat16 nor float64 (and float16 only as an
// extension), so every value is handled as bits in u32 words.
//
// NaN: quiet, sign kept, payload truncated from the top (what x86's conversions do, and torch
// with them): float32 -> float16 is sign | 0x7e00 | mantissa >> 13, float64 -> float32 is
// sign | 0x7fc00000 | mantissa >> 29. float64 -> float16 goes through float32, as torch's does
// (it rounds twice).
//
// One invocation writes one output word: two float16 values (the second 0 past the end) or
// one float32. Elements are counted from the start of the bound ranges.

struct Params {
    // Elements in this dispatch.
    count: u32,
    // 0 bf16->f16, 1 bf16->f32, 2 f32->f16, 3 f64->f16, 4 f64->f32.
    mode: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

// Bit k of the 64-bit value (hi, lo).
fn bit64(hi: u32, lo: u32, k: u32) -> u32 {
    if (k < 32u) {
        return (lo >> k) & 1u;
    }
    return (hi >> (k - 32u)) & 1u;
}

// Whether any of the low k bits of (hi, lo) is set (1 <= k <= 63).
fn sticky64(hi: u32, lo: u32, k: u32) -> bool {
    if (k >= 32u) {
        if (lo != 0u) {
            return true;
        }
        if (k == 32u) {
            return false;
        }
        return (hi & ((1u << (k - 32u)) - 1u)) != 0u;
    }
    return (lo & ((1u << k) - 1u)) != 0u;
}

// (hi, lo) >> s, rounded to nearest even (1 <= s <= 63; the result fits in 32 bits).
fn shift_round(hi: u32, lo: u32, s: u32) -> u32 {
    var q: u32;
    if (s >= 32u) {
        q = hi >> (s - 32u);
    } else {
        q = (lo >> s) | (hi << (32u - s));
    }
    let round = bit64(hi, lo, s - 1u);
    var sticky = false;
    if (s >= 2u) {
        sticky = sticky64(hi, lo, s - 1u);
    }
    if (round == 1u && (sticky || (q & 1u) == 1u)) {
        q = q + 1u;
    }
    return q;
}

fn f32_to_f16(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let exp = (x >> 23u) & 0xffu;
    let mant = x & 0x7fffffu;
    if (exp == 0xffu) {
        if (mant != 0u) {
            return sign | 0x7e00u | (mant >> 13u);
        }
        return sign | 0x7c00u;
    }
    let e = i32(exp) - 112; // the float16 biased exponent
    if (e >= 31) {
        return sign | 0x7c00u;
    }
    if (e <= 0) {
        if (e < -10 || exp == 0u) {
            return sign; // below half the smallest subnormal (float32 subnormals included)
        }
        return sign | shift_round(0u, mant | 0x800000u, u32(14 - e));
    }
    // A carry out of the mantissa moves into the exponent (up to infinity), as it must.
    return sign | ((u32(e) << 10u) + shift_round(0u, mant, 13u));
}

fn f64_to_f32(lo: u32, hi: u32) -> u32 {
    let sign = hi & 0x80000000u;
    let exp = (hi >> 20u) & 0x7ffu;
    let mhi = hi & 0xfffffu;
    if (exp == 0x7ffu) {
        if (mhi != 0u || lo != 0u) {
            return sign | 0x7fc00000u | (mhi << 3u) | (lo >> 29u);
        }
        return sign | 0x7f800000u;
    }
    let e = i32(exp) - 896; // the float32 biased exponent
    if (e >= 255) {
        return sign | 0x7f800000u;
    }
    if (e <= 0) {
        if (e < -23 || exp == 0u) {
            return sign;
        }
        return sign | shift_round(mhi | 0x100000u, lo, u32(30 - e));
    }
    return sign | ((u32(e) << 23u) + shift_round(mhi, lo, 29u));
}

// Element i of the source as float32 bits (modes whose source is not float64).
fn load32(i: u32) -> u32 {
    if (params.mode <= 1u) {
        let word = src[i >> 1u];
        return ((word >> (16u * (i & 1u))) & 0xffffu) << 16u;
    }
    return src[i];
}

// Element i converted to float16 bits.
fn to_f16(i: u32) -> u32 {
    if (params.mode == 3u) {
        return f32_to_f16(f64_to_f32(src[2u * i], src[2u * i + 1u]));
    }
    return f32_to_f16(load32(i));
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let w = gid.x + gid.y * groups.x * 256u;
    let mode = params.mode;
    if (mode == 1u || mode == 4u) {
        if (w >= params.count) {
            return;
        }
        if (mode == 4u) {
            dst[w] = f64_to_f32(src[2u * w], src[2u * w + 1u]);
        } else {
            dst[w] = load32(w);
        }
        return;
    }
    let i = 2u * w;
    if (i >= params.count) {
        return;
    }
    var word = to_f16(i);
    if (i + 1u < params.count) {
        word = word | (to_f16(i + 1u) << 16u);
    }
    dst[w] = word;
}
