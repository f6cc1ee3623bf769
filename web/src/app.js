// The page of `altclip-onnx convert BUNDLE --to web`: photo search on the device. The model runs in a Web
// Worker (worker.js); this side keeps the photos (File objects and their vectors, in memory), draws the UI
// and exposes window.altclip:
//   await altclip.ready                      -> {name, precision, embeddingDim, crossOriginIsolated}
//   await altclip.tokenize(texts)            -> token ids per text (as the Python runtime's)
//   await altclip.embedTexts(texts)          -> L2-normalized vectors (Float32Array per text)
//   await altclip.embedImages(filesOrBlobs)  -> L2-normalized vectors per image
//   await altclip.pixelValues(filesOrBlobs)  -> the image tower's input: a Float32Array, N * 3 * S * S
//   await altclip.addPhotos(files, onProgress?) -> how many photos are kept (embedded once each)
//   await altclip.search(query, k = 24)      -> [{name, score}], best first (score: cosine)
//   altclip.photos                           -> [{name, file}] in the order added
const base = new URL("./", document.baseURI).href;
const worker = new Worker(new URL("assets/worker.js", base), { type: "module" });
const pending = new Map();
let nextId = 0;
worker.onmessage = ({ data: { id, result, error } }) => {
  const { resolve, reject } = pending.get(id);
  pending.delete(id);
  if (error) reject(new Error(error)); else resolve(result);
};
function call(op, ...args) {
  return new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, op, args });
  });
}

const IMAGE_STEP = 4;  // photos per worker call while indexing (progress granularity)
const photos = [];  // {name, file, vector, url}
const known = new Set();  // names already kept

function nameOf(file) {
  return file.webkitRelativePath || file.name || `photo-${photos.length + 1}`;
}

function isImage(file) {
  return !file.type || file.type.startsWith("image/");
}

async function addPhotos(files, onProgress = () => {}) {
  const fresh = [...files].filter((f) => isImage(f) && !known.has(nameOf(f)));
  let done = 0;
  onProgress(done, fresh.length);
  for (let start = 0; start < fresh.length; start += IMAGE_STEP) {
    const batch = fresh.slice(start, start + IMAGE_STEP);
    const vectors = await call("embedImages", batch);
    batch.forEach((file, i) => {
      const name = nameOf(file);
      known.add(name);
      photos.push({ name, file, vector: vectors[i], url: null });
    });
    done += batch.length;
    onProgress(done, fresh.length);
  }
  return photos.length;
}

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

async function rank(query, k) {
  const [vector] = await call("embedTexts", [query]);
  return photos.map((p) => ({ photo: p, score: dot(vector, p.vector) }))
    .sort((a, b) => b.score - a.score).slice(0, k);
}

const config = fetch(new URL("site.json", base)).then((r) => r.json());
const ready = config.then(async (site) => {
  const info = await call("init", { base, config: site });
  return { name: site.name, precision: site.precision, embeddingDim: site.embedding_dim, ...info };
});

window.altclip = {
  ready,
  tokenize: (texts) => ready.then(() => call("tokenize", [...texts])),
  embedTexts: (texts) => ready.then(() => call("embedTexts", [...texts])),
  embedImages: (files) => ready.then(() => call("embedImages", [...files])),
  pixelValues: (files) => ready.then(() => call("pixels", [...files])),
  addPhotos: (files, onProgress) => ready.then(() => addPhotos(files, onProgress)),
  search: async (query, k = 24) => {
    await ready;
    return (await rank(query, k)).map(({ photo, score }) => ({ name: photo.name, score }));
  },
  get photos() { return photos.map(({ name, file }) => ({ name, file })); },
};

// --- the UI -------------------------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
const RESULTS = 24;

function setStatus(element, text, error = false) {
  element.textContent = text;
  element.classList.toggle("error", error);
}

async function index(files) {
  const status = $("index-status");
  const bar = $("progress");
  const started = performance.now();
  bar.hidden = false;
  try {
    const total = await window.altclip.addPhotos(files, (n, of) => {
      bar.max = Math.max(of, 1);
      bar.value = n;
      const rate = n / Math.max((performance.now() - started) / 1000, 1e-3);
      setStatus(status, of ? `Embedding photos: ${n} of ${of}` + (n ? ` (${rate.toFixed(1)} photos/s)` : "") : "No new photos.");
    });
    setStatus(status, `${total} photo${total === 1 ? "" : "s"} ready to search.`);
    $("q").disabled = false;
    $("search-button").disabled = false;
    if ($("q").value.trim()) await search();
  } catch (error) {
    setStatus(status, error.message, true);
  } finally {
    bar.hidden = true;
  }
}

async function search() {
  const query = $("q").value.trim();
  const status = $("search-status");
  if (!query) return;
  setStatus(status, "Searching…");
  try {
    const hits = await rank(query, RESULTS);
    const list = $("results");
    list.replaceChildren(...hits.map(({ photo, score }) => {
      photo.url ||= URL.createObjectURL(photo.file);
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.className = "hit button";
      link.href = photo.url;
      link.target = "_blank";
      link.rel = "noopener";
      const img = document.createElement("img");
      img.src = photo.url;
      img.alt = photo.name;
      img.loading = "lazy";
      const badge = document.createElement("span");
      badge.className = "score";
      badge.textContent = score.toFixed(3);
      const path = document.createElement("span");
      path.className = "path";
      path.textContent = photo.name;
      link.append(img, badge, path);
      item.append(link);
      return item;
    }));
    setStatus(status, hits.length ? `${hits.length} of ${photos.length} photos, best match first.` : "No photos yet.");
  } catch (error) {
    setStatus(status, error.message, true);
  }
}

function setUp() {
  const status = $("model-status");
  ready.then((info) => {
    $("model").textContent = `${info.name} · ${info.precision} · on this device`;
    setStatus(status, "The model is loaded. Add photos: they stay on this device.");
    for (const id of ["folder", "files"]) $(id).disabled = false;
  }, (error) => setStatus(status, `The model did not load: ${error.message}`, true));
  for (const id of ["folder", "files"]) {
    $(id).addEventListener("change", (event) => {
      const files = [...event.target.files];  // a copy: clearing the input empties its FileList
      event.target.value = "";
      index(files);
    });
  }
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  const zone = $("drop");
  const over = (on) => (event) => { event.preventDefault(); zone.classList.toggle("over", on); };
  zone.addEventListener("dragover", over(true));
  zone.addEventListener("dragleave", over(false));
  zone.addEventListener("drop", (event) => {
    over(false)(event);
    const files = [...event.dataTransfer.files];
    ready.then(() => index(files));
  });
}

setUp();
