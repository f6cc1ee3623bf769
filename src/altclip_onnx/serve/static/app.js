// The page of altclip-onnx serve: photo search (with --db) or zero-shot classification (without).
// Plain JavaScript, no dependencies; everything it loads comes from this service.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const mode = document.body.dataset.mode;
  const RESULTS = 24;
  let key = sessionStorage.getItem("altclip-onnx-key") || "";
  let retry = null;  // what to run again once a key is given

  class NeedKey extends Error {}

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) throw new NeedKey("an API key is needed");
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  }

  // Runs a task that calls the API, showing progress and errors in a status line; asks for a key on 401.
  async function run(status, task, again) {
    status.classList.remove("error");
    status.textContent = "Working…";
    try {
      await task();
    } catch (error) {
      if (error instanceof NeedKey) {
        status.textContent = key ? "The key was refused: enter the right one." : "Enter the API key to go on.";
        askKey(again);
      } else {
        status.textContent = error.message;
        status.classList.add("error");
      }
    }
  }

  function askKey(again) {
    retry = again;
    $("key-form").hidden = false;
    $("key").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem("altclip-onnx-key", key);
    $("key").value = "";
    $("key-form").hidden = true;
    const again = retry;
    retry = null;
    if (again) again();
  });

  fetch("/health").then((r) => r.json()).then((h) => {
    const photos = h.images === undefined ? "" : ` · ${h.images} photos`;
    $("model").textContent = `${h.model} · ${h.embedding_dim}-d · ${h.precision.visual}${photos}`;
  }).catch(() => {});

  const basename = (path) => path.split(/[\\/]/).pop();

  // Drop an image anywhere on the page.
  function onDrop(use) {
    let depth = 0;
    const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
    document.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      document.body.classList.add("dragging");
    });
    document.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) document.body.classList.remove("dragging");
    });
    document.addEventListener("dragover", (event) => { if (hasFiles(event)) event.preventDefault(); });
    document.addEventListener("drop", (event) => {
      depth = 0;
      document.body.classList.remove("dragging");
      const file = Array.from(event.dataTransfer?.files || []).find((f) => f.type.startsWith("image/"));
      if (!file) return;
      event.preventDefault();
      use(file);
    });
  }

  // --- search ------------------------------------------------------------------------------------
  function searchPage() {
    $("search-view").hidden = false;
    const status = $("search-status");
    const results = $("results");
    let thumbnails = [];  // object URLs, released at the next search
    let queryUrl = null;

    function setQueryImage(file) {
      if (queryUrl) URL.revokeObjectURL(queryUrl);
      queryUrl = file ? URL.createObjectURL(file) : null;
      $("query-image").hidden = !file;
      $("query-preview").src = queryUrl || "";
      $("query-name").textContent = file ? `Photos like ${file.name}` : "";
    }

    // The text searched for, in the box and in the address (/?q=...), so a search can be shared as a link;
    // "" for a search by image, which a link cannot carry.
    function setQueryText(text) {
      $("q").value = text;
      const url = new URL(window.location.href);
      if (text) url.searchParams.set("q", text); else url.searchParams.delete("q");
      window.history.replaceState(null, "", url);
    }

    async function thumbnail(img, url) {
      try {
        const blob = await (await api(url)).blob();
        const objectUrl = URL.createObjectURL(blob);
        thumbnails.push(objectUrl);
        img.addEventListener("load", () => { img.dataset.loaded = "1"; }, { once: true });
        img.src = objectUrl;
      } catch (error) {
        img.alt = `${img.alt} (no thumbnail: ${error.message})`;
      }
    }

    function show(hits, what) {
      thumbnails.forEach((u) => URL.revokeObjectURL(u));
      thumbnails = [];
      results.replaceChildren();
      if (!hits.length) {
        status.textContent = "No photos in the index.";
        return;
      }
      hits.forEach((hit, rank) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "hit";
        button.title = hit.path;
        button.dataset.path = hit.path;
        button.dataset.id = hit.id;
        button.setAttribute("aria-label",
          `${rank + 1}: ${basename(hit.path)}, score ${hit.score.toFixed(3)}. Find photos like this one.`);
        const img = document.createElement("img");
        img.alt = basename(hit.path);
        const score = document.createElement("span");
        score.className = "score";
        score.textContent = hit.score.toFixed(3);
        const path = document.createElement("span");
        path.className = "path";
        path.textContent = hit.path;
        button.append(img, score, path);
        button.addEventListener("click", () => byId(hit.id, hit.path));
        item.append(button);
        results.append(item);
        thumbnail(img, hit.thumbnail);
      });
      status.textContent = `${hits.length} photos ${what}, best first. Hover or focus one to see its path.`;
    }

    function byText(text) {
      run(status, async () => {
        const response = await api(`/v1/search?q=${encodeURIComponent(text)}&k=${RESULTS}`);
        setQueryImage(null);
        setQueryText(text);
        show((await response.json()).data, `for “${text}”`);
      }, () => byText(text));
    }

    function byImage(file) {
      run(status, async () => {
        const form = new FormData();
        form.append("image", file, file.name);
        form.append("k", String(RESULTS));
        const response = await api("/v1/search", { method: "POST", body: form });
        setQueryImage(file);
        setQueryText("");
        show((await response.json()).data, `like ${file.name}`);
      }, () => byImage(file));
    }

    function byId(id, path) {
      run(status, async () => {
        const response = await api("/v1/search", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id, k: RESULTS }),
        });
        setQueryImage(null);
        setQueryText("");
        show((await response.json()).data, `like ${basename(path)}`);
        results.querySelector("button")?.focus();
      }, () => byId(id, path));
    }

    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("q").value.trim();
      if (text) byText(text);
    });
    $("search-file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) byImage(file);
      event.target.value = "";
    });
    $("clear-image").addEventListener("click", () => {
      setQueryImage(null);
      results.replaceChildren();
      status.textContent = "";
      $("q").focus();
    });
    onDrop(byImage);
    $("q").focus();
    const shared = (new URLSearchParams(window.location.search).get("q") || "").trim();  // a shared link
    if (shared) {
      $("q").value = shared;
      byText(shared);
    }
  }

  // --- zero-shot classification ------------------------------------------------------------------
  function classifyPage() {
    $("classify-view").hidden = false;
    const status = $("classify-status");
    const bars = $("probabilities");
    let chosen = null;
    let previewUrl = null;

    const lines = (text) => text.split("\n").map((s) => s.trim()).filter(Boolean);
    function labels() {
      const found = lines($("labels").value);
      return found.length === 1 && found[0].includes(",") ? found[0].split(",").map((s) => s.trim()).filter(Boolean) : found;
    }

    function choose(file) {
      chosen = file;
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = URL.createObjectURL(file);
      $("classify-preview").src = previewUrl;
      $("classify-preview").alt = `the chosen image, ${file.name}`;
      $("classify-preview").hidden = false;
      $("pick-empty").hidden = true;
      if (labels().length) classify();
    }

    function show(probabilities) {
      const rows = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
      bars.replaceChildren(...rows.map(([label, p]) => {
        const item = document.createElement("li");
        const name = document.createElement("span");
        name.className = "label";
        name.textContent = label;
        const track = document.createElement("span");
        track.className = "track";
        track.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.className = "fill";
        fill.style.width = `${(100 * p).toFixed(1)}%`;
        fill.style.display = "block";
        track.append(fill);
        const pct = document.createElement("span");
        pct.className = "pct";
        pct.textContent = `${(100 * p).toFixed(1)}%`;
        item.dataset.label = label;
        item.dataset.probability = String(p);
        item.append(name, track, pct);
        return item;
      }));
    }

    function classify() {
      if (!chosen) {
        status.textContent = "Choose an image first.";
        $("classify-file").focus();
        return;
      }
      const file = chosen;
      run(status, async () => {
        const form = new FormData();
        form.append("image", file, file.name);
        labels().forEach((label) => form.append("label", label));
        lines($("templates").value).forEach((template) => form.append("template", template));
        const response = await api("/v1/classify", { method: "POST", body: form });
        show((await response.json()).data[0].probabilities);
        status.textContent = `${file.name}: the labels by probability.`;
      }, classify);
    }

    $("classify-form").addEventListener("submit", (event) => { event.preventDefault(); classify(); });
    $("classify-file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) choose(file);
      event.target.value = "";
    });
    onDrop(choose);
  }

  if (mode === "search") searchPage(); else classifyPage();
})();
