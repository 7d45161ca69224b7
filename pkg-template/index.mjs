// Node, `import ... from "ptload"`: the same module instance as `require("ptload")` (no dual
// package hazard: one wasm instance, one set of classes).
import api from "./index.cjs";

export const { load, init, save, Checkpoint, Tensor, Storage, PtloadError } = api;
export default api;
