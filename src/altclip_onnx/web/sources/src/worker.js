// The model side of the page, in a Web Worker: transformers.js' tokenizer, CLIP image processor and the two
// towers (CLIPTextModelWithProjection, CLIPVisionModelWithProjection) on onnxruntime-web: WebGPU when the
// browser has a GPU adapter and its numbers pass the check below, else WebAssembly. Before either is used, it
// runs the bundle's quick PyTorch reference cases (check.json) and must pass the precision's gate; a
// WebAssembly backend that fails it makes init fail (the page says so and embeds nothing).
// Everything is loaded from the site itself (env.allowRemoteModels = false, wasmPaths on the site).
// Messages: {id, op, args} -> {id, result} or {id, error}; while files load, {loading: {file, loaded, total}}.
import {
  env, AutoTokenizer, AutoProcessor, CLIPTextModelWithProjection, CLIPVisionModelWithProjection, RawImage, Tensor,
} from "@huggingface/transformers";
import { decode, normalizeSquare, pixelValues, supported } from "./pixels.js";

const IMAGE_BATCH = 4;
let site = null;
let tokenizer = null;
let processor = null;
let textModel = null;
let visionModel = null;
const PROGRESS_EVERY_MS = 100;  // at most this often per file, and at its end
const reported = new Map();  // file -> when its progress was last posted

// transformers.js' progress events for the files it loads (from the site, or from Cache Storage), posted to the page.
function progress(event) {
  if (event.status !== "progress" || !event.file) return;
  const now = performance.now();
  const done = event.loaded >= event.total;
  if (!done && now - (reported.get(event.file) ?? -Infinity) < PROGRESS_EVERY_MS) return;
  reported.set(event.file, now);
  self.postMessage({ loading: { file: event.file, loaded: event.loaded, total: event.total } });
}

// The model loaded, checked, and what this browser kept of it for the next visit.
async function init({ base, config }) {
  const loaded = await loadAndCheck({ base, config });
  return { ...loaded, offline: await keptOffline(base, config) };
}

// Which of the files a visit downloads (the model's, onnxruntime-web's) this browser kept in Cache Storage. It
// may refuse them (a disk nearly full, a small quota for the site): the next visit then downloads those again,
// and the page says so instead of promising otherwise. usage and quota: navigator.storage.estimate()'s bytes.
async function keptOffline(base, config) {
  const wanted = [config.wasm.wasm, config.wasm.mjs,
                  ...Object.keys(config.model_files).map((file) => `models/${config.model}/${file}`)]
    .map((path) => new URL(path, base).pathname);
  const kept = new Set();
  for (const name of await caches.keys()) {
    for (const request of await (await caches.open(name)).keys()) kept.add(new URL(request.url).pathname);
  }
  const estimate = await navigator.storage?.estimate?.().catch(() => null);
  return { files: wanted.length, missing: wanted.filter((path) => !kept.has(path)),
           usage: estimate?.usage ?? null, quota: estimate?.quota ?? null };
}

async function loadAndCheck({ base, config }) {
  site = config;
  env.allowRemoteModels = false;
  env.allowLocalModels = true;
  // A path, not a URL: transformers.js 4.3.2 looks for local files only at paths (an http URL is skipped).
  env.localModelPath = new URL("models/", base).pathname;
  env.useBrowserCache = true;  // Cache Storage: a reload reads the model from there (its folder name carries the fingerprint)
  env.backends.onnx.wasm.wasmPaths = {
    mjs: new URL(config.wasm.mjs, base).href,
    wasm: new URL(config.wasm.wasm, base).href,
  };
  // Threads need cross-origin isolation (SharedArrayBuffer): one per core, at most 4 (onnxruntime-web's
  // own default takes half the cores).
  env.backends.onnx.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  [tokenizer, processor] = await Promise.all([
    AutoTokenizer.from_pretrained(config.model, { progress_callback: progress }),
    AutoProcessor.from_pretrained(config.model, { progress_callback: progress })]);
  const reference = await (await fetch(new URL("check.json", base))).json();
  let webgpu = "no WebGPU adapter in this browser";
  if (self.navigator.gpu && await self.navigator.gpu.requestAdapter().catch(() => null)) {
    try {
      await load("webgpu");
      const check = await selfCheck(reference);
      if (check.passed) {
        return { backend: "webgpu", check, crossOriginIsolated: self.crossOriginIsolated, threads: null };
      }
      webgpu = `refused: ${check.failure}`;
    } catch (error) {
      webgpu = `failed to load: ${error.message || error}`;
    }
    await Promise.all([textModel, visionModel].map((model) => model?.dispose()));  // the GPU's sessions
  }
  await load("wasm");
  const check = await selfCheck(reference);
  if (!check.passed) {
    const other = site.precision === "int8" ? "rebuild the site at --precision fp32, or " : "";
    throw new Error(`this browser's numbers do not match the bundle's PyTorch reference: ${check.failure}; ` +
                    `${other}use another browser`);
  }
  return { backend: "wasm", check, webgpu, crossOriginIsolated: self.crossOriginIsolated,
           threads: env.backends.onnx.wasm.numThreads ?? null };
}

async function load(device) {
  const options = { dtype: site.dtype, device, progress_callback: progress };
  textModel = await CLIPTextModelWithProjection.from_pretrained(site.model, options);
  visionModel = await CLIPVisionModelWithProjection.from_pretrained(site.model, options);
}

function cosine(a, b) {
  let dot = 0, norm = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; norm += a[i] * a[i]; }
  return dot / Math.sqrt(norm || 1);  // b is stored normalized
}

// The reference cases on the loaded towers, run as the page runs its inputs (images in a batch, texts one at
// a time: embedTexts): per tower the least and the mean cosine of a row to PyTorch's, and for images the least
// cosine of a row run alone to the same row in its batch, held against the precision's gate (precisions.py,
// as the Python runtime's first-use check).
async function selfCheck(reference) {
  const result = { passed: true, failure: null };
  for (const tower of ["visual", "textual"]) {
    const cosines = [];
    let alone = [1, null];
    for (const item of reference[tower]) {
      const rows = [];
      if (tower === "visual") {
        const all = [...Array(item.shape[0]).keys()];
        rows.push(...await embedSquares(item, all));
        for (const r of all.length > 1 ? all : []) {
          const c = cosine((await embedSquares(item, [r]))[0], rows[r]);
          if (c <= alone[0]) alone = [c, `${item.name} row ${r}`];
        }
        // And in a batch of the size the page embeds, its rows over and over (a kernel may go wrong on a row
        // only a fuller batch reaches).
        const filled = [...Array(IMAGE_BATCH).keys()].map((i) => all[i % all.length]);
        (await embedSquares(item, filled)).forEach((vector, i) => {
          const c = cosine(vector, rows[filled[i]]);
          if (c <= alone[0]) alone = [c, `${item.name} row ${filled[i]} in a batch of ${IMAGE_BATCH}`];
        });
      } else {
        for (const [r, row] of item.input_ids.entries()) {
          const length = item.attention_mask[r].reduce((sum, m) => sum + m, 0);  // right-padded
          rows.push(await embedIds(row.slice(0, length)));
        }
      }
      rows.forEach((row, r) => cosines.push([cosine(row, item.expected[r]), `${item.name} row ${r}`]));
    }
    const least = cosines.reduce((a, b) => (b[0] < a[0] ? b : a));
    const mean = cosines.reduce((sum, [c]) => sum + c, 0) / cosines.length;
    result[tower] = { min_cosine: least[0], mean_cosine: mean, rows: cosines.length,
                      batch_invariance: tower === "visual" ? alone[0] : null };
    if (result.passed && least[0] < reference.min_cosine) {
      result.passed = false;
      result.failure = `${tower} ${reference.precision} ${least[1]}: cosine ${least[0].toFixed(4)} < ${reference.min_cosine}`;
    } else if (result.passed && reference.mean_cosine !== null && mean < reference.mean_cosine) {
      result.passed = false;
      result.failure = `${tower} ${reference.precision}: mean cosine ${mean.toFixed(4)} < ${reference.mean_cosine}`;
    } else if (result.passed && alone[0] < reference.batch_invariance) {
      result.passed = false;
      result.failure = `${tower} ${reference.precision} ${alone[1]}: alone and inside its batch, cosine ` +
                       `${alone[0].toFixed(6)} < ${reference.batch_invariance}: vectors depend on the batch`;
    }
  }
  return result;
}

// Rows `rows` of a reference image case (its 8-bit squares) through the image tower, as L2-normalized rows.
async function embedSquares(item, rows) {
  const size = item.shape[1];
  const squares = Uint8Array.from(atob(item.squares), (c) => c.charCodeAt(0));
  const data = new Float32Array(rows.length * 3 * size * size);
  rows.forEach((row, i) => normalizeSquare(squares.subarray(row * size * size * 3), site.image, data, i * 3 * size * size));
  const { image_embeds } = await visionModel({ pixel_values: new Tensor("float32", data, [rows.length, 3, size, size]) });
  return normalized(image_embeds);
}

// One text's token ids through the text tower, unpadded, as an L2-normalized row.
async function embedIds(row) {
  const { text_embeds } = await textModel({
    input_ids: new Tensor("int64", BigInt64Array.from(row, BigInt), [1, row.length]),
    attention_mask: new Tensor("int64", new BigInt64Array(row.length).fill(1n), [1, row.length]),
  });
  return normalized(text_embeds)[0];
}

// Token ids as the Python runtime makes them: <s> ... </s>, at most max_length, </s> kept as the last one
// (transformers.js' own truncation would cut it off).
function ids(text) {
  const all = tokenizer.encode(text, { add_special_tokens: true });
  if (all.length <= site.max_length) return all;
  return [...all.slice(0, site.max_length - 1), all[all.length - 1]];
}

function normalized(tensor) {
  const [rows, dim] = tensor.dims;
  const data = tensor.data;
  const out = [];
  for (let r = 0; r < rows; r++) {
    const row = Float32Array.from(data.subarray(r * dim, (r + 1) * dim));
    let norm = 0;
    for (const v of row) norm += v * v;
    norm = Math.sqrt(norm) || 1;
    for (let i = 0; i < dim; i++) row[i] /= norm;
    out.push(row);
  }
  return out;
}

// One text at a time, each at its own length: the int8 text tower's vectors in a padded batch depend on the
// batch here (onnxruntime-web's kernels round a padded text otherwise than the same text alone, and per-row
// int8 carries that across rounding steps; docs/web.md has the figure), so texts are never padded and a
// text's vector is the same in every call.
async function embedTexts(texts) {
  const out = [];
  for (const text of texts) out.push(await embedIds(ids(text)));
  return out;
}

// pixel_values [N, 3, S, S] for Blobs: the Python runtime's preprocessing (pixels.js) when the bundle's filter
// is one it implements, else transformers.js' CLIPImageProcessor.
// With thumbnails > 0, also a small JPEG per image (pixels.js' decode; null on transformers.js' path).
async function pixels(blobs, thumbnails = 0) {
  const spec = site.image;
  if (!spec || !supported(spec.resample)) {
    const { pixel_values } = await processor(await Promise.all(blobs.map((b) => RawImage.fromBlob(b))));
    pixel_values.thumbs = blobs.map(() => null);
    return pixel_values;
  }
  const plane = 3 * spec.size * spec.size;
  const data = new Float32Array(blobs.length * plane);
  const thumbs = [];
  for (let i = 0; i < blobs.length; i++) {
    const decoded = await decode(blobs[i], thumbnails);
    pixelValues(decoded, spec, data, i * plane);
    thumbs.push(decoded.thumb);
  }
  const tensor = new Tensor("float32", data, [blobs.length, 3, spec.size, spec.size]);
  tensor.thumbs = thumbs;
  return tensor;
}

async function embedImages(blobs, thumbnails = 0) {
  const vectors = [];
  const thumbs = [];
  for (let start = 0; start < blobs.length; start += IMAGE_BATCH) {
    const pixel_values = await pixels(blobs.slice(start, start + IMAGE_BATCH), thumbnails);
    thumbs.push(...pixel_values.thumbs);
    const { image_embeds } = await visionModel({ pixel_values });
    vectors.push(...normalized(image_embeds));
  }
  return thumbnails > 0 ? { vectors, thumbs } : vectors;
}

const OPS = {
  init,
  tokenize: async (texts) => texts.map(ids),
  embedTexts,
  embedImages,
  pixels: async (blobs) => (await pixels(blobs)).data,
};

self.onmessage = async ({ data: { id, op, args } }) => {
  try {
    const result = await OPS[op](...args);
    self.postMessage({ id, result });
  } catch (error) {
    self.postMessage({ id, error: String(error && error.stack || error) });
  }
};
