//! Floating-point storage conversion on the GPU (feature `wgpu`): a placed `float16`,
//! `bfloat16`, `float32` or `float64` storage into a new `float16` or `float32` buffer by the
//! compute shader `src/shaders/convert.wgsl` (the same WGSL the npm package's WebGPU placement
//! inlines), bit-exact with torch's CPU `.to(dtype)` (round to nearest even, NaN payloads as x86
//! truncates them, float64 → float16 through float32 as torch rounds).
//!
//! The converted buffer keeps the element order, so a tensor's `storage_offset` and strides
//! (in elements) still describe its view; only the element size changes. Storages larger than
//! the device's `max_storage_buffer_binding_size` are converted in several dispatches.

use std::num::NonZeroU64;

use super::wgpu::{padded, scope_error, WgpuBuffer};
use crate::error::{Error, ErrorKind, Result};
use crate::torch::Dtype;

/// The shader's source, shared with the npm package (`pkg-template/src/webgpu.mjs`).
pub const CONVERT_WGSL: &str = include_str!("../shaders/convert.wgsl");

/// Threads per workgroup in the shader.
const WORKGROUP: u64 = 64;
/// Most workgroups per dispatch dimension (WebGPU's default limit).
const MAX_GROUPS: u64 = 65_535;

/// `len` bytes of `buffer` from `offset`, as a binding (padded to 4 bytes).
fn binding(buffer: &wgpu::Buffer, offset: u64, len: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: NonZeroU64::new(padded(len)),
    })
}

fn error(message: String) -> Error {
    Error::new(ErrorKind::Location {
        message: format!("webgpu: {message}"),
    })
}

/// The shader's mode for a conversion (`source * 2 + target`, sources float16, bfloat16,
/// float32, float64; targets float16, float32), or `None` when the shader does not do it.
fn mode(from: Dtype, to: Dtype) -> Option<u32> {
    let source = match from {
        Dtype::Float16 => 0,
        Dtype::BFloat16 => 1,
        Dtype::Float32 => 2,
        Dtype::Float64 => 3,
        _ => return None,
    };
    let target = match to {
        Dtype::Float16 => 0,
        Dtype::Float32 => 1,
        _ => return None,
    };
    // Same dtype: a copy, not a dispatch.
    (from != to).then_some(source * 2 + target)
}

/// The compiled conversion pipeline of one device: make it once, convert many storages.
pub struct Converter {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl std::fmt::Debug for Converter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Converter")
    }
}

impl Converter {
    /// Compiles the shader for `device`.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Self> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("ptload convert.wgsl"),
            source: wgpu::ShaderSource::Wgsl(CONVERT_WGSL.into()),
        });
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("ptload convert"),
            entries: &[
                storage(0, true),
                storage(1, false),
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("ptload convert"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("ptload convert"),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = scope_error(scope) {
            return Err(error(format!("compiling convert.wgsl failed: {e}")));
        }
        Ok(Converter {
            device: device.clone(),
            queue: queue.clone(),
            pipeline,
            layout,
        })
    }

    /// A new buffer holding `storage`'s elements as `to` (`float16` or `float32`), converted
    /// on the GPU. The source must be `float16`, `bfloat16`, `float32` or `float64`; a storage
    /// already of dtype `to` is copied.
    pub fn convert(&self, storage: &WgpuBuffer, to: Dtype) -> Result<WgpuBuffer> {
        let from = storage.dtype();
        let in_size = from.element_size() as u64;
        let out_size = to.element_size() as u64;
        let numel = super::DeviceBuffer::nbytes(storage) / in_size.max(1);
        let out_bytes = numel * out_size;
        let mode = match mode(from, to) {
            Some(mode) => Some(mode),
            None if from == to && matches!(to, Dtype::Float16 | Dtype::Float32) => None,
            None => {
                return Err(error(format!(
                    "converting {} to {} on the GPU is not supported (from float16, bfloat16, \
                     float32 or float64 to float16 or float32)",
                    from.name(),
                    to.name()
                )))
            }
        };
        let limits = self.device.limits();
        if padded(out_bytes) > limits.max_buffer_size {
            return Err(error(format!(
                "the converted storage is {out_bytes} bytes, over the device's max_buffer_size of \
                 {} bytes",
                limits.max_buffer_size
            )));
        }
        let memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ptload converted"),
            size: padded(out_bytes),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        let mut uniforms = Vec::new();
        match mode {
            None if out_bytes > 0 => {
                encoder.copy_buffer_to_buffer(storage.buffer(), 0, &out, 0, padded(out_bytes))
            }
            None => {}
            Some(mode) => {
                // Elements per dispatch: a multiple of 256 (so every binding offset is 512-byte
                // aligned) whose float64 input fits one binding.
                let max_binding = limits.max_storage_buffer_binding_size;
                let per = (max_binding / 8 / 256 * 256).clamp(256, u64::from(u32::MAX) / 2 * 2);
                let mut start = 0;
                while start < numel {
                    let count = per.min(numel - start);
                    let params = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("ptload convert params"),
                        size: 8,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    let mut bytes = [0u8; 8];
                    bytes[..4].copy_from_slice(&mode.to_le_bytes());
                    bytes[4..].copy_from_slice(&(count as u32).to_le_bytes());
                    self.queue.write_buffer(&params, 0, &bytes);
                    let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("ptload convert"),
                        layout: &self.layout,
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: binding(
                                    storage.buffer(),
                                    start * in_size,
                                    count * in_size,
                                ),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: binding(&out, start * out_size, count * out_size),
                            },
                            wgpu::BindGroupEntry {
                                binding: 2,
                                resource: params.as_entire_binding(),
                            },
                        ],
                    });
                    let words = if out_size == 2 {
                        count.div_ceil(2)
                    } else {
                        count
                    };
                    let groups = words.div_ceil(WORKGROUP);
                    let x = groups.min(MAX_GROUPS);
                    let y = groups.div_ceil(x);
                    {
                        let mut pass = encoder.begin_compute_pass(&Default::default());
                        pass.set_pipeline(&self.pipeline);
                        pass.set_bind_group(0, &group, &[]);
                        pass.dispatch_workgroups(x as u32, y as u32, 1);
                    }
                    uniforms.push(params);
                    start += count;
                }
            }
        }
        let index = self.queue.submit([encoder.finish()]);
        let waited = self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        });
        for params in &uniforms {
            params.destroy();
        }
        let failed = [scope_error(validation), scope_error(memory)]
            .into_iter()
            .flatten()
            .next()
            .or(waited.err().map(|e| e.to_string()));
        if let Some(e) = failed {
            out.destroy();
            return Err(error(format!(
                "converting {} to {} failed: {e}",
                from.name(),
                to.name()
            )));
        }
        Ok(storage.with_buffer(out, to, out_bytes))
    }
}

impl WgpuBuffer {
    /// A new buffer with this storage's elements as `to` (`float16` or `float32`), converted on
    /// the GPU bit-exactly as torch's `.to(dtype)` (see [`Converter`], which compiles the shader
    /// once for many storages).
    pub fn to_dtype(&self, to: Dtype) -> Result<WgpuBuffer> {
        Converter::new(self.device(), self.queue())?.convert(self, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_cover_torchs_float_pairs_only() {
        assert_eq!(mode(Dtype::BFloat16, Dtype::Float16), Some(2));
        assert_eq!(mode(Dtype::Float16, Dtype::Float32), Some(1));
        assert_eq!(mode(Dtype::Float64, Dtype::Float32), Some(7));
        assert_eq!(mode(Dtype::Float32, Dtype::Float32), None);
        assert_eq!(mode(Dtype::Int32, Dtype::Float32), None);
        assert_eq!(mode(Dtype::Float32, Dtype::BFloat16), None);
    }

    #[test]
    fn the_shader_parses() {
        let module = wgpu::naga::front::wgsl::parse_str(CONVERT_WGSL);
        assert!(module.is_ok(), "{:?}", module.err());
    }
}
