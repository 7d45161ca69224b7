// The TypeScript declarations describe the real API: a strict program using it compiles, both
// as an ES module (`import`) and as CommonJS (`require`), and misuses do not.
// TypeScript comes from .cache/npm-tools (scripts/test installs it: npm install typescript@5.9.3).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { PKG, ROOT } from "./helpers.mjs";

const TSC = join(ROOT, ".cache", "npm-tools", "node_modules", "typescript", "bin", "tsc");

const USE = `
const bytes = new Uint8Array(8);
async function main(blob: Blob, response: Response, device: GPUDevice): Promise<number> {
  const onGpu: Checkpoint = await load(blob, {
    mapLocation: { "cuda:0": "webgpu" },
    device,
    dtype: "float16",
    signal: new AbortController().signal,
  });
  const placed: GPUBuffer | null = onGpu.storages[0].buffer;
  void placed;
  // @ts-expect-error: dtype converts to float16 or float32 only
  await load(blob, { device, dtype: "bfloat16" });
  await init();
  const ckpt: Checkpoint = await load(bytes, {
    mapLocation: (storage: StorageInfo, location: string) => (location.startsWith("cuda") ? "cpu" : undefined),
    weightsOnly: true,
    encoding: "latin1",
    onProgress: ({ loadedBytes, totalBytes }: Progress) => void [loadedBytes, totalBytes],
  });
  await load(blob, { mapLocation: { "cuda:0": "cpu" } });
  await load(response, { mapLocation: new Map([["cuda:0", "cpu"]]) });
  await load(bytes.buffer, { mapLocation: "meta", name: "x.pt" });
  const format: "zip" | "legacy" | "tar" | "torchscript" = ckpt.format;
  let total = format.length + (ckpt.byteOrder === "big" ? 1 : 0);
  for (const [path, t] of ckpt.tensors()) {
    const d: Dtype = t.dtype;
    total += path.length + d.length + t.shape[0] + t.stride.length + t.storageOffset;
    const data: TensorData | WebGpuData | null = t.data;
    if (data instanceof Float32Array) total += data[0];
    if (t.device === "webgpu" && data !== null && "buffer" in data && !ArrayBuffer.isView(data)) {
      const buffer: GPUBuffer = data.buffer;
      total += buffer.size + data.byteOffset;
    }
    const raw: Uint8Array = await t.contiguousBytes();
    total += raw.length + (t.storage ? t.storage.nbytes : 0) + (t.device === "cpu" ? 1 : 0);
  }
  const w: Tensor | undefined = ckpt.tensor("fc.weight");
  const root: Value = ckpt.root;
  if (root !== null && typeof root === "object" && !Array.isArray(root) && !(root instanceof Map)) total += 1;
  void w;
  // @ts-expect-error: a path is not an input
  await load("model.pt");
  // @ts-expect-error: weightsOnly is a boolean
  await load(bytes, { weightsOnly: "no" });
  // @ts-expect-error: data may be null (meta)
  total += ckpt.tensors()[0][1].data.length;
  return total;
}
void main;
`;

test("the declarations type-check a strict program (import and require)", (t) => {
  assert.ok(existsSync(TSC), `TypeScript is not installed in ${TSC}: scripts/test installs it`);
  const dir = mkdtempSync(join(tmpdir(), "ptload-ts-"));
  try {
    mkdirSync(join(dir, "node_modules"));
    symlinkSync(PKG, join(dir, "node_modules", "ptload"), "dir");
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "scratch", private: true, type: "module" }));
    const names = "load, init, Checkpoint, Tensor, StorageInfo, Progress, Dtype, TensorData, WebGpuData, Value";
    // The package's dependency @webgpu/types, as npm would install it beside the package.
    const types = join(ROOT, ".cache", "npm-tools", "node_modules", "@webgpu");
    assert.ok(existsSync(types), `${types} is missing: scripts/install-webgpu installs it`);
    mkdirSync(join(dir, "node_modules", "@webgpu"));
    symlinkSync(join(types, "types"), join(dir, "node_modules", "@webgpu", "types"), "dir");
    writeFileSync(join(dir, "use.mts"), `import { ${names} } from "ptload";\n${USE}`);
    writeFileSync(join(dir, "use.cts"), `import { ${names} } from "ptload";\n${USE}`);
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: {
        strict: true, noEmit: true, module: "nodenext", moduleResolution: "nodenext",
        target: "es2022", lib: ["es2022", "dom"], types: [], skipLibCheck: false, preserveSymlinks: true,
      },
      files: ["use.mts", "use.cts"],
    }));
    let out = "";
    try {
      execFileSync(process.execPath, [TSC, "-p", dir], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      out = e.stdout.toString() + e.stderr.toString();
    }
    assert.equal(out, "", out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
