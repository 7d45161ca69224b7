// Node, `require("ptload")`: the wasm module (wasm-bindgen's nodejs target, loaded synchronously)
// under the shared JS API.
"use strict";
const bindings = require("./wasm/ptload_wasm.cjs");
const { createApi } = require("./lib/api.cjs");
const { createSave } = require("./lib/save.cjs");

const api = createApi(() => bindings);
Object.assign(api, createSave(() => bindings, api.Checkpoint));
/** Nothing to do in Node (the wasm module is loaded with the package); for symmetry with browsers. */
api.init = async () => {};
module.exports = api;
