// Node, `require("ptload")`: the wasm module (wasm-bindgen's nodejs target, loaded synchronously)
// under the shared JS API. A path string or a `file:` URL opens the file for positioned reads
// straight into the storages' buffers (only the ranges a load asks for; not through a Blob,
// whose reads Node makes in 64 KiB pieces), or a distributed checkpoint's folder (holding
// `.metadata`) as its files; another URL is fetched.
"use strict";
const fs = require("node:fs");
const { join } = require("node:path");
const { fileURLToPath } = require("node:url");
const bindings = require("./wasm/ptload_wasm.cjs");
const { createApi, FILE_READER, PtloadError } = require("./lib/api.cjs");
const { createSave } = require("./lib/save.cjs");
const { freshBuffers } = require("./lib/fresh-buffers.cjs");

/** The OS's words for what can go wrong opening a file (as the native CLI prints them). */
const OS_ERRORS = {
  ENOENT: "No such file or directory (os error 2)",
  EACCES: "Permission denied (os error 13)",
  EISDIR: "Is a directory (os error 21)",
  ENOTDIR: "Not a directory (os error 20)",
};

async function open(input) {
  if (input instanceof URL && input.protocol !== "file:") {
    return { input: await fetchUrl(input), name: input.href };
  }
  const path = input instanceof URL ? fileURLToPath(input) : input;
  try {
    const stat = await fs.promises.stat(path);
    if (stat.isDirectory()) return { input: await folder(path), name: path };
    return { input: await openFile(path), name: path };
  } catch (e) {
    if (e instanceof PtloadError) throw e;
    throw new PtloadError(`${path}: ${OS_ERRORS[e.code] ?? e.message}`, { kind: "Io", file: path });
  }
}

/** A file for api.mjs to read straight into the buffers it allocates (`readInto`: positioned
 * reads on one FileHandle, opened on the first read, closed by `close()` when the load ends),
 * also Blob-like (`slice`, `arrayBuffer`). Its size is the file's true size (Node's own
 * fs.openAsBlob reports a file over 4 GiB modulo 2^32, at least in Node 20), and only the ranges
 * the load asks for are read. */
async function openFile(path) {
  const { size } = await fs.promises.stat(path);
  let handle = null;
  const ioError = (e) => new PtloadError(`${path}: ${OS_ERRORS[e.code] ?? e.message}`, { kind: "Io", file: path });
  /** Fills `target` from byte `position` on; returns the bytes read (fewer at the end of the file). */
  const readInto = async (target, position) => {
    try {
      handle ??= fs.promises.open(path, "r");
      const h = await handle;
      let done = 0;
      while (done < target.length) {
        const { bytesRead } = await h.read(target, done, target.length - done, position + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    } catch (e) {
      throw ioError(e);
    }
  };
  const read = async (start, end) => {
    const out = new Uint8Array(alloc(end - start));
    const done = await readInto(out, start);
    // Short only when the file shrank (the caller then says so): the one case with a copy.
    return done === out.length ? out.buffer : out.buffer.slice(0, done);
  };
  const part = (start, end) => ({ size: end - start, type: "", arrayBuffer: () => read(start, end) });
  const clamp = (x) => Math.max(0, Math.min(x, size));
  return {
    size,
    type: "",
    name: path,
    slice: (start = 0, end = size) => part(clamp(start), Math.max(clamp(start), clamp(end))),
    arrayBuffer: () => read(0, size),
    readInto,
    async close() {
      const h = handle;
      handle = null;
      if (h) await (await h).close();
    },
    [FILE_READER]: true,
  };
}

/** An ArrayBuffer of n bytes, not zeroed (every byte of it is read into before it is used). */
function alloc(n) {
  return Buffer.allocUnsafeSlow(n).buffer;
}

/** A distributed checkpoint's folder (it holds `.metadata`): its files, by name. Another
 * folder is refused as the native loader refuses it (naming the checkpoint file it holds). */
async function folder(path) {
  const entries = await fs.promises.readdir(path, { withFileTypes: true });
  if (!entries.some((e) => e.name === ".metadata" && e.isFile())) {
    const why = bindings.explainDirectory(entries.filter((e) => e.isFile()).map((e) => e.name));
    throw new PtloadError(`${path}: not a PyTorch checkpoint: ${why}`, { kind: "NotACheckpoint", file: path });
  }
  const files = new Map();
  for (const e of entries) if (e.isFile()) files.set(e.name, await openFile(join(path, e.name)));
  return files;
}

async function fetchUrl(url) {
  try {
    return await fetch(url);
  } catch (e) {
    throw new PtloadError(`${url.href}: ${e.cause?.message ?? e.message}`, { kind: "Io", file: url.href });
  }
}

const api = createApi(() => bindings, { open, alloc, fresh: freshBuffers() });
Object.assign(api, createSave(() => bindings, api.Checkpoint));
/** Nothing to do in Node (the wasm module is loaded with the package); for symmetry with browsers. */
api.init = async () => {};
module.exports = api;
