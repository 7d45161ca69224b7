// A real WebGPU device for the Node tests: the npm package `webgpu` (Dawn) on Mesa's llvmpipe
// through OpenGL ES, installed by scripts/install-webgpu (a missing one is a failure, never a
// skip). `trackBuffers` counts the GPUBuffers a device has alive, to prove nothing leaks.

import { createRequire } from "node:module";
import { join } from "node:path";

import { ROOT } from "./helpers.mjs";

process.env.EGL_PLATFORM ??= "surfaceless";
const require = createRequire(join(ROOT, ".cache", "npm-tools", "package.json"));
const { create, globals } = require("webgpu");
Object.assign(globalThis, globals);

/** Kept for the life of the process: Dawn's instance must outlive every device made from it. */
let gpu;
let adapterPromise;

/** A fresh GPUDevice (with the adapter's largest buffer limits) whose live buffers are counted. */
export async function gpuDevice() {
  gpu ??= create(["backend=opengles"]);
  adapterPromise ??= gpu.requestAdapter({ featureLevel: "compatibility" });
  const adapter = await adapterPromise;
  if (!adapter) throw new Error("no WebGPU adapter (Dawn on OpenGL ES): see scripts/install-webgpu");
  const device = await adapter.requestDevice({
    requiredLimits: {
      maxBufferSize: adapter.limits.maxBufferSize,
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    },
  });
  return trackBuffers(device);
}

/** Wraps `device.createBuffer` so `device.live` is the set of buffers not yet destroyed. */
export function trackBuffers(device) {
  const live = new Set();
  const createBuffer = device.createBuffer.bind(device);
  device.createBuffer = (descriptor) => {
    const buffer = createBuffer(descriptor);
    live.add(buffer);
    const destroy = buffer.destroy.bind(buffer);
    buffer.destroy = () => {
      live.delete(buffer);
      destroy();
    };
    return buffer;
  };
  device.live = live;
  return device;
}

/** Destroys the GPUBuffers of a loaded checkpoint. */
export function release(ckpt) {
  for (const s of ckpt.storages) if (s.buffer) s.buffer.destroy();
}
