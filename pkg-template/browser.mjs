// Browsers and bundlers: wasm-bindgen's web target. The wasm file is found next to its glue
// code (`new URL("ptload_wasm_bg.wasm", import.meta.url)`, which bundlers understand) and
// fetched on the first load(); call init() first to fetch it from elsewhere.
import initWasm, * as bindings from "./wasm/ptload_wasm.mjs";
import { createApi } from "./lib/api.mjs";
import { createSave } from "./lib/save.mjs";

let ready;

/** Fetches and instantiates the wasm module (optional: load() does it on first use).
 * `moduleOrPath`: a URL, a Response, bytes or a WebAssembly.Module of ptload_wasm_bg.wasm. */
export function init(moduleOrPath) {
  ready ??= initWasm(moduleOrPath === undefined ? undefined : { module_or_path: moduleOrPath })
    .then(() => bindings);
  return ready;
}

const api = createApi(() => init());
const { save } = createSave(() => init(), api.Checkpoint);

export const { load, Checkpoint, Tensor, Storage } = api;
export { save };
export default { ...api, save, init };
