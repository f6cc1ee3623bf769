// The page of `altclip-onnx convert BUNDLE --to web`: photo search on the device. The model runs in a Web
// Worker (worker.js); this side keeps the photos (File objects and their vectors, in memory), draws the UI
// and exposes window.altclip:
//   await altclip.ready                      -> {name, precision, embeddingDim, backend ("wasm" or "webgpu"),
//                                               check (the reference check's cosines per tower), webgpu (why
//                                               not, when not), crossOriginIsolated, threads, offline
//                                               ({files, missing: paths this browser did not keep in Cache
//                                               Storage, usage, quota})}
//   await altclip.tokenize(texts)            -> token ids per text (as the Python runtime's)
//   await altclip.embedTexts(texts)          -> L2-normalized vectors (Float32Array per text)
//   await altclip.embedImages(filesOrBlobs)  -> L2-normalized vectors per image
//   await altclip.pixelValues(filesOrBlobs)  -> the image tower's input: a Float32Array, N * 3 * S * S
//   await altclip.addPhotos(files, onProgress?) -> how many photos are kept; only new or changed ones (name,
//                                               size, modified time) are embedded; from a folder pick, photos
//                                               kept under that folder but no longer in it are dropped
//   await altclip.addFolder(handle, onProgress?) -> the same for a FileSystemDirectoryHandle (File System Access
//                                               API): its photos, subfolders included, as "folder/sub/name";
//                                               the handle is kept, so a later visit can scan it again
//   await altclip.rescan(onProgress?)        -> addFolder on the kept handle (asks for read permission)
//   altclip.folder                           -> the kept folder's name, or null
//   await altclip.removePhotos(names)        -> how many photos are kept
//   await altclip.search(query, k = 24)      -> [{name, score}], best first (score: cosine)
//   await altclip.searchByImage(file, k = 24) -> the same, for photos like an example image
//   altclip.photos                           -> [{name, size, lastModified, file}] (file: null after a reload)
//   altclip.loading                          -> {loaded, total, files: {file: {loaded, total}}}: bytes of the
//                                               model's files read so far (downloaded, or from the cache)
//   altclip.stats                            -> {embedded, restored}: images embedded by this page, photos
//                                               restored from IndexedDB at load
// The photos' vectors, identities and 256-px thumbnails are kept in IndexedDB (one database per model), so a
// reload resumes without embedding again.
const base = new URL("./", document.baseURI).href;
const worker = new Worker(new URL("assets/worker.js", base), { type: "module" });
const pending = new Map();
let nextId = 0;
const loading = { loaded: 0, total: 0, files: {} };
worker.onmessage = ({ data: { id, result, error, loading: file } }) => {
  if (file) {
    loading.files[file.file] = { loaded: file.loaded, total: file.total };
    const all = Object.values(loading.files);
    loading.loaded = all.reduce((sum, f) => sum + f.loaded, 0);
    loading.total = all.reduce((sum, f) => sum + f.total, 0);
    showLoading();
    return;
  }
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
const THUMBNAIL = 256;  // longest edge of the kept thumbnails, in pixels
const photos = new Map();  // name -> {name, size, lastModified, file, vector, thumb, url}
const paths = new WeakMap();  // File -> its path inside a folder read with the File System Access API
let folderHandle = null;  // the last folder chosen with the File System Access API
const stats = { embedded: 0, restored: 0 };
let database = null;  // IndexedDB, opened once the model is known

function relativePath(file) {
  return paths.get(file) || file.webkitRelativePath;
}

function nameOf(file) {
  return relativePath(file) || file.name || `photo-${photos.size + 1}`;
}

function isImage(file) {
  return !file.type || file.type.startsWith("image/");
}

function request(r) {
  return new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });
}

async function openDatabase(model) {
  if (typeof indexedDB === "undefined") return null;
  const open = indexedDB.open(`altclip-onnx-${model}`, 2);
  open.onupgradeneeded = () => {
    for (const [name, options] of [["photos", { keyPath: "name" }], ["folders", {}]]) {
      if (!open.result.objectStoreNames.contains(name)) open.result.createObjectStore(name, options);
    }
  };
  try {
    return await request(open);
  } catch (_) {
    return null;  // private windows may refuse: the page still works, without resuming
  }
}

function store(mode, name = "photos") {
  return database.transaction(name, mode).objectStore(name);
}

async function restore() {
  if (!database) return;
  for (const { name, size, lastModified, vector, thumb } of await request(store("readonly").getAll())) {
    photos.set(name, { name, size, lastModified, file: null, vector, thumb, url: null });
  }
  stats.restored = photos.size;
  folderHandle = (await request(store("readonly", "folders").get("last"))) || null;
}

function forget(photo) {
  if (photo.url) URL.revokeObjectURL(photo.url);
  photos.delete(photo.name);
}

async function removePhotos(names) {
  const gone = names.map((n) => photos.get(n)).filter(Boolean);
  gone.forEach(forget);
  if (database && gone.length) {
    const objects = store("readwrite");
    await Promise.all(gone.map((p) => request(objects.delete(p.name))));
  }
  return photos.size;
}

async function addPhotos(files, onProgress = () => {}) {
  const picked = [...files].filter(isImage);
  // A folder pick is the folder's whole content: what it kept under that folder before and lacks now is gone.
  const folders = new Set(picked.map(relativePath).filter(Boolean).map((p) => p.split("/")[0] + "/"));
  const names = new Set(picked.map(nameOf));
  await removePhotos([...photos.keys()].filter((n) => !names.has(n) && [...folders].some((f) => n.startsWith(f))));
  const fresh = [];
  for (const file of picked) {
    const kept = photos.get(nameOf(file));
    if (kept && kept.size === file.size && kept.lastModified === file.lastModified) {
      if (!kept.file) { kept.file = file; if (kept.url) { URL.revokeObjectURL(kept.url); kept.url = null; } }
    } else {
      fresh.push(file);
    }
  }
  let done = 0;
  onProgress(done, fresh.length);
  for (let start = 0; start < fresh.length; start += IMAGE_STEP) {
    const batch = fresh.slice(start, start + IMAGE_STEP);
    const { vectors, thumbs } = await call("embedImages", batch, THUMBNAIL);
    stats.embedded += batch.length;
    const records = batch.map((file, i) => ({
      name: nameOf(file), size: file.size, lastModified: file.lastModified, vector: vectors[i], thumb: thumbs[i] }));
    for (const record of records) {
      const old = photos.get(record.name);
      if (old) forget(old);
      photos.set(record.name, { ...record, file: batch[records.indexOf(record)], url: null });
    }
    if (database) {
      const objects = store("readwrite");
      await Promise.all(records.map((r) => request(objects.put(r))));
    }
    done += batch.length;
    onProgress(done, fresh.length);
  }
  return photos.size;
}

// Every file under a directory handle, its path ("folder/sub/name") remembered for nameOf.
async function walk(handle, prefix, out) {
  for await (const entry of handle.values()) {
    if (entry.kind === "directory") {
      await walk(entry, `${prefix}${entry.name}/`, out);
    } else {
      const file = await entry.getFile();
      paths.set(file, `${prefix}${file.name}`);
      out.push(file);
    }
  }
  return out;
}

async function addFolder(handle, onProgress) {
  const files = await walk(handle, `${handle.name}/`, []);
  folderHandle = handle;
  if (database) await request(store("readwrite", "folders").put(handle, "last"));
  if (!files.some(isImage)) {  // an empty folder still drops what was kept under it
    await removePhotos([...photos.keys()].filter((n) => n.startsWith(`${handle.name}/`)));
  }
  return addPhotos(files, onProgress);
}

async function rescan(onProgress) {
  if (!folderHandle) throw new Error("no folder was chosen on this page yet");
  if (folderHandle.requestPermission && await folderHandle.requestPermission({ mode: "read" }) !== "granted") {
    throw new Error(`reading ${folderHandle.name} was not allowed`);
  }
  return addFolder(folderHandle, onProgress);
}

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// query: a text, or a File/Blob (search by example photo).
async function rank(query, k) {
  const [vector] = typeof query === "string" ? await call("embedTexts", [query]) : await call("embedImages", [query]);
  return [...photos.values()].map((p) => ({ photo: p, score: dot(vector, p.vector) }))
    .sort((a, b) => b.score - a.score).slice(0, k);
}

const config = fetch(new URL("site.json", base)).then((r) => r.json());
const ready = config.then(async (site) => {
  const info = await call("init", { base, config: site });
  database = await openDatabase(site.model);
  await restore();
  return { name: site.name, precision: site.precision, embeddingDim: site.embedding_dim, photos: photos.size,
           ...info };
});

window.altclip = {
  ready,
  tokenize: (texts) => ready.then(() => call("tokenize", [...texts])),
  embedTexts: (texts) => ready.then(() => call("embedTexts", [...texts])),
  embedImages: (files) => ready.then(() => call("embedImages", [...files])),
  pixelValues: (files) => ready.then(() => call("pixels", [...files])),
  addPhotos: (files, onProgress) => ready.then(() => addPhotos(files, onProgress)),
  addFolder: (handle, onProgress) => ready.then(() => addFolder(handle, onProgress)),
  rescan: (onProgress) => ready.then(() => rescan(onProgress)),
  get folder() { return folderHandle ? folderHandle.name : null; },
  removePhotos: (names) => ready.then(() => removePhotos([...names])),
  search: async (query, k = 24) => {
    await ready;
    return (await rank(query, k)).map(({ photo, score }) => ({ name: photo.name, score }));
  },
  searchByImage: async (image, k = 24) => {
    await ready;
    return (await rank(image, k)).map(({ photo, score }) => ({ name: photo.name, score }));
  },
  get photos() {
    return [...photos.values()].map(({ name, size, lastModified, file }) => ({ name, size, lastModified, file }));
  },
  loading,
  stats,
};

// --- the UI -------------------------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
const RESULTS = 24;

const mb = (bytes) => (bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0);

function setStatus(element, text, error = false) {
  element.textContent = text;
  element.classList.toggle("error", error);
}

let modelReady = false;
let expectedBytes = 0;  // the model folder's files (site.json), known before they load
config.then((site) => { expectedBytes = Object.values(site.model_files || {}).reduce((sum, n) => sum + n, 0); });
function showLoading() {
  if (modelReady || !loading.total) return;
  setStatus($("model-status"), `Loading the model: ${mb(loading.loaded)} of ${mb(Math.max(loading.total, expectedBytes))} MB (kept in this ` +
            "browser afterwards, so later visits read it from there)…");
}

function showRescan() {
  $("rescan").hidden = !folderHandle;
  if (folderHandle) $("rescan").textContent = `Scan ${folderHandle.name} again`;
}

// adding(onProgress) adds photos (addPhotos, addFolder or rescan) while the progress is shown.
async function index(adding) {
  const status = $("index-status");
  const bar = $("progress");
  const started = performance.now();
  bar.hidden = false;
  try {
    const total = await adding((n, of) => {
      bar.max = Math.max(of, 1);
      bar.value = n;
      const seconds = (performance.now() - started) / 1000;
      const rate = n / Math.max(seconds, 1e-3);
      const left = n ? `, about ${Math.ceil((of - n) / rate)} s left` : "";
      setStatus(status, of ? `Embedding photos: ${n} of ${of}` + (n ? ` (${rate.toFixed(1)} photos/s${left})` : "")
                           : "No new photos.");
    });
    showRescan();
    setStatus(status, `${total} photo${total === 1 ? "" : "s"} ready to search.`);
    for (const id of ["q", "search-button", "search-file"]) $(id).disabled = false;
    if ($("q").value.trim()) await search();
  } catch (error) {
    setStatus(status, error.message, true);
  } finally {
    bar.hidden = true;
  }
}

async function search(example = null) {
  const query = example || $("q").value.trim();
  const status = $("search-status");
  if (!query) return;
  setStatus(status, "Searching…");
  try {
    const hits = await rank(query, RESULTS);
    const list = $("results");
    list.replaceChildren(...hits.map(({ photo, score }) => {
      photo.url ||= URL.createObjectURL(photo.file || photo.thumb || new Blob());
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
    setStatus(status, hits.length ? `${hits.length} of ${photos.size} photos, best match first.` : "No photos yet.");
  } catch (error) {
    setStatus(status, error.message, true);
  }
}

function setUp() {
  const status = $("model-status");
  ready.then((info) => {
    modelReady = true;
    const backend = info.backend === "webgpu" ? "WebGPU" : "WebAssembly";
    $("model").textContent = `${info.name} · ${info.precision} · ${backend} · on this device`;
    const { missing, usage, quota } = info.offline;
    const kept = missing.length === 0 ? "" : ` This browser did not keep ${missing.length} of its ${info.offline.files} ` +
      `files for the next visit (site storage: ${mb(usage ?? 0)} of ${mb(quota ?? 0)} MB used): the next visit ` +
      "downloads them again. Free some disk space to keep them.";
    setStatus(status, `The model is loaded. Add photos: they stay on this device.${kept}`, missing.length > 0);
    for (const id of ["folder", "files"]) $(id).disabled = false;
    showRescan();
    if (photos.size) {
      setStatus($("index-status"), `${photos.size} photo${photos.size === 1 ? "" : "s"} kept from before, ready to ` +
                "search. Choose the folder again to add new photos and drop removed ones.");
      for (const id of ["q", "search-button", "search-file"]) $(id).disabled = false;
    }
  }, (error) => setStatus(status, `The model did not load: ${error.message}`, true));
  for (const id of ["folder", "files"]) {
    $(id).addEventListener("change", (event) => {
      const files = [...event.target.files];  // a copy: clearing the input empties its FileList
      event.target.value = "";
      index((onProgress) => addPhotos(files, onProgress));
    });
  }
  // The File System Access API where the browser has it: the folder's handle is kept, so a later visit can
  // scan it again without choosing it; elsewhere the <input webkitdirectory> above.
  if (window.showDirectoryPicker) {
    $("folder-label").addEventListener("click", async (event) => {
      event.preventDefault();
      let handle;
      try {
        handle = await window.showDirectoryPicker({ id: "altclip-photos", mode: "read" });
      } catch (_) {
        return;  // the picker was closed
      }
      index((onProgress) => addFolder(handle, onProgress));
    });
  }
  $("rescan").addEventListener("click", () => index(rescan));
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  $("search-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    event.target.value = "";
    if (file) search(file);
  });
  const zone = $("drop");
  const over = (on) => (event) => { event.preventDefault(); zone.classList.toggle("over", on); };
  zone.addEventListener("dragover", over(true));
  zone.addEventListener("dragleave", over(false));
  zone.addEventListener("drop", (event) => {
    over(false)(event);
    const files = [...event.dataTransfer.files];
    ready.then(() => index((onProgress) => addPhotos(files, onProgress)));
  });
}

setUp();
