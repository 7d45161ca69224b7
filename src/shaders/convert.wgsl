// Floating-point dtype conversion on the GPU, bit-exact with torch's `.to(dtype)` on the CPU:
// IEEE round-to-nearest-even in integer arithmetic (WGSL has no f64 or bf16, and its own f16
// conversions may flush subnormals). Used by the npm package's WebGPU placement (`dtype`
// option); one dispatch converts one window of a storage.
//
// Modes (`params.mode`): source dtype * 2 + target, with sources 0 = float16, 1 = bfloat16,
// 2 = float32, 3 = float64 and targets 0 = float16, 1 = float32. Elements are read and written
// as little-endian u32 words; float16/bfloat16 pack two elements per word, float64 takes two.

struct Params {
    mode: u32,
    count: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> params: Params;

fn half_at(i: u32) -> u32 {
    let word = src[i >> 1u];
    return select(word & 0xffffu, word >> 16u, (i & 1u) == 1u);
}

fn f16_to_f32(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    var m = h & 0x3ffu;
    if (e == 0x1fu) {
        return sign | 0x7f800000u | (m << 13u);
    }
    if (e == 0u) {
        if (m == 0u) {
            return sign;
        }
        var biased = 113u;
        loop {
            if ((m & 0x400u) != 0u) {
                break;
            }
            m = m << 1u;
            biased = biased - 1u;
        }
        return sign | (biased << 23u) | ((m & 0x3ffu) << 13u);
    }
    return sign | ((e + 112u) << 23u) | (m << 13u);
}

fn round_up(h: u32, rem: u32, half: u32) -> u32 {
    if (rem > half || (rem == half && (h & 1u) == 1u)) {
        return h + 1u;
    }
    return h;
}

fn f32_to_f16(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;
    let e = (x >> 23u) & 0xffu;
    let m = x & 0x7fffffu;
    if (e == 0xffu) {
        // NaN: quieted, the payload's top bits kept (as the x86 conversion torch uses).
        return select(sign | 0x7c00u, sign | 0x7e00u | (m >> 13u), m != 0u);
    }
    if (e >= 143u) {
        return sign | 0x7c00u;
    }
    if (e >= 113u) {
        return sign | round_up(((e - 112u) << 10u) | (m >> 13u), m & 0x1fffu, 0x1000u);
    }
    if (e < 102u) {
        return sign;
    }
    let full = m | 0x800000u;
    let shift = 126u - e;
    return sign | round_up(full >> shift, full & ((1u << shift) - 1u), 1u << (shift - 1u));
}

fn f64_to_f32(lo: u32, hi: u32) -> u32 {
    let sign = hi & 0x80000000u;
    let e = (hi >> 20u) & 0x7ffu;
    let mh = hi & 0xfffffu;
    if (e == 0x7ffu) {
        if ((mh | lo) != 0u) {
            return sign | 0x7fc00000u | (mh << 3u) | (lo >> 29u);
        }
        return sign | 0x7f800000u;
    }
    if (e >= 1151u) {
        return sign | 0x7f800000u;
    }
    if (e >= 897u) {
        let f = ((e - 896u) << 23u) | (mh << 3u) | (lo >> 29u);
        return sign | round_up(f, lo & 0x1fffffffu, 0x10000000u);
    }
    if (e < 873u) {
        return sign;
    }
    // A float32 subnormal: the 53-bit significand shifted right by 30..53 bits.
    let sh = mh | 0x100000u;
    let shift = 926u - e;
    var h: u32;
    var rem_hi: u32;
    var rem_lo: u32;
    var half_hi: u32;
    var half_lo: u32;
    if (shift >= 32u) {
        let s = shift - 32u;
        h = sh >> s;
        rem_hi = sh & ((1u << s) - 1u);
        rem_lo = lo;
        if (s == 0u) {
            half_hi = 0u;
            half_lo = 0x80000000u;
        } else {
            half_hi = 1u << (s - 1u);
            half_lo = 0u;
        }
    } else {
        h = (sh << (32u - shift)) | (lo >> shift);
        rem_hi = 0u;
        rem_lo = lo & ((1u << shift) - 1u);
        half_hi = 0u;
        half_lo = 1u << (shift - 1u);
    }
    let above = rem_hi > half_hi || (rem_hi == half_hi && rem_lo > half_lo);
    let tie = rem_hi == half_hi && rem_lo == half_lo;
    if (above || (tie && (h & 1u) == 1u)) {
        h = h + 1u;
    }
    return sign | h;
}

/** Element `i` of the source as float32 bits. */
fn load_f32(source: u32, i: u32) -> u32 {
    switch source {
        case 0u: {
            return f16_to_f32(half_at(i));
        }
        case 1u: {
            return half_at(i) << 16u;
        }
        case 2u: {
            return src[i];
        }
        default: {
            return f64_to_f32(src[2u * i], src[2u * i + 1u]);
        }
    }
}

/** Element `i` of the source as float16 bits (float64 rounds through float32, as torch does). */
fn load_f16(source: u32, i: u32) -> u32 {
    if (source == 0u) {
        return half_at(i);
    }
    return f32_to_f16(load_f32(source, i));
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = (group.y * groups.x + group.x) * 64u + local;
    let source = params.mode >> 1u;
    if ((params.mode & 1u) == 1u) {
        if (index < params.count) {
            dst[index] = load_f32(source, index);
        }
    } else {
        let first = index * 2u;
        if (first < params.count) {
            var word = load_f16(source, first);
            if (first + 1u < params.count) {
                word = word | (load_f16(source, first + 1u) << 16u);
            }
            dst[index] = word;
        }
    }
}
