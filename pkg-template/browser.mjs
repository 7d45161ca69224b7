// Browsers and bundlers: wasm-bindgen's web target. The wasm file is found next to its glue
// code (`new URL("ptload_wasm_bg.wasm", import.meta.url)`, which bundlers understand) and
// fetched on the first load(); call init() first to fetch it from elsewhere. A string or URL
// given to load() is fetched.
import initWasm, * as bindings from "./wasm/ptload_wasm.mjs";
import { createApi, PtloadError } from "./lib/api.mjs";
import { createSave } from "./lib/save.mjs";

let ready;

/** Fetches and instantiates the wasm module (optional: load() does it on first use).
 * `moduleOrPath`: a URL, a Response, bytes or a WebAssembly.Module of ptload_wasm_bg.wasm. */
export function init(moduleOrPath) {
  ready ??= initWasm(moduleOrPath === undefined ? undefined : { module_or_path: moduleOrPath })
    .then(() => bindings);
  return ready;
}

/** A string or URL input is fetched (the Response's body streams in as it arrives). */
async function open(input) {
  const name = String(input);
  let response;
  try {
    response = await fetch(input);
  } catch (e) {
    throw new PtloadError(`${name}: ${e.message}`, { kind: "Io", file: name });
  }
  return { input: response, name: response.url || name };
}

const api = createApi(() => init(), { open });
const { save } = createSave(() => init(), api.Checkpoint);

export const { load, Checkpoint, Tensor, Storage } = api;
export { PtloadError, save };
export default { ...api, save, init };
