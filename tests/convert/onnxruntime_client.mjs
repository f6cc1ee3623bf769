// Run one ONNX graph in onnxruntime for JavaScript, as transformers.js does: "node" (onnxruntime-node, its
// backend in Node) or "web" (onnxruntime-web with WebAssembly, its backend in browsers).
//
//   node onnxruntime_client.mjs web|node MODEL.onnx INPUTS.json   (prints {"ok": true, "outputs": ...} or
//   {"ok": false, "error": ...} on one line; INPUTS: {name: {"type", "dims", "data"}})
import fs from 'node:fs';
const [backend, model, inputsPath] = process.argv.slice(2);
const ort = backend === 'web' ? await import('onnxruntime-web') : await import('onnxruntime-node');
if (backend === 'web') { ort.env.wasm.numThreads = 1; }
const req = JSON.parse(fs.readFileSync(inputsPath, 'utf8'));
try {
  const opts = backend === 'web' ? { executionProviders: ['wasm'] } : { executionProviders: ['cpu'] };
  const session = await ort.InferenceSession.create(backend === 'web' ? fs.readFileSync(model) : model, opts);
  const feeds = {};
  for (const [name, t] of Object.entries(req)) {
    const Arr = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array }[t.type];
    const data = t.type === 'int64' ? BigInt64Array.from(t.data.map(BigInt)) : Arr.from(t.data);
    feeds[name] = new ort.Tensor(t.type, data, t.dims);
  }
  const res = await session.run(feeds);
  const outputs = {};
  for (const [k, v] of Object.entries(res)) outputs[k] = { dims: v.dims, data: Array.from(v.data, Number) };
  console.log(JSON.stringify({ ok: true, version: ort.env.versions, outputs }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, version: ort.env.versions, error: String(e.message ?? e).split('\n').slice(0, 3).join(' ') }));
}
