// Image preprocessing equal to the Python runtime's (src/altclip_onnx/runtime/images.py), which is Pillow's:
// decode (EXIF orientation applied, no colour conversion), composite transparency onto white, resize so the
// shortest edge is shortest_edge (the long edge truncated, as transformers does) with Pillow's two-pass
// fixed-point resampling (horizontal pass, then vertical, 8-bit in between), center crop (zero-padded when
// smaller), then rescale and normalize in float32 through a per-level table.
// transformers.js' CLIPImageProcessor resizes with the canvas instead: image vectors within ~0.9994 of ours.

const PRECISION_BITS = 32 - 8 - 2;  // Pillow's Resample.c
const HALF = 1 << (PRECISION_BITS - 1);
const ONE = 1 << PRECISION_BITS;

const FILTERS = {  // PIL resample codes -> [support, kernel]
  1: [3, (x) => (x < 0 ? -x : x) < 3 ? sinc(x) * sinc(x / 3) : 0],  // LANCZOS
  2: [1, (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }],  // BILINEAR
  3: [2, (x) => {  // BICUBIC, a = -0.5
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  }],
  4: [0.5, (x) => (x > -0.5 && x <= 0.5 ? 1 : 0)],  // BOX
  5: [1, (x) => {  // HAMMING
    if (x < 0) x = -x;
    if (x === 0) return 1;
    if (x >= 1) return 0;
    x *= Math.PI;
    return Math.sin(x) / x * (0.54 + 0.46 * Math.cos(x));
  }],
};

function sinc(x) {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

export function supported(resample) {
  return resample in FILTERS;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: bounds [min, count] and int weights.
function coefficients(inSize, outSize, resample) {
  const [baseSupport, filter] = FILTERS[resample];
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = baseSupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      let w = x < xmax ? k[x] : 0;
      if (ww !== 0 && x < xmax) w /= ww;
      weights[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * ONE : 0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, weights, ksize };
}

function clip8(sum) {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// RGB (3 bytes a pixel) resampling along x, then along y, as Pillow's ImagingResample.
function resize(rgb, width, height, outWidth, outHeight, resample) {
  let data = rgb;
  let w = width;
  if (outWidth !== width) {
    const { bounds, weights, ksize } = coefficients(width, outWidth, resample);
    const out = new Uint8Array(outWidth * height * 3);
    for (let y = 0; y < height; y++) {
      const row = y * width * 3;
      for (let xx = 0; xx < outWidth; xx++) {
        const xmin = bounds[xx * 2], count = bounds[xx * 2 + 1], k = xx * ksize;
        for (let c = 0; c < 3; c++) {
          let sum = HALF;
          for (let x = 0; x < count; x++) sum += data[row + (xmin + x) * 3 + c] * weights[k + x];
          out[(y * outWidth + xx) * 3 + c] = clip8(sum);
        }
      }
    }
    data = out;
    w = outWidth;
  }
  if (outHeight !== height) {
    const { bounds, weights, ksize } = coefficients(height, outHeight, resample);
    const out = new Uint8Array(w * outHeight * 3);
    for (let yy = 0; yy < outHeight; yy++) {
      const ymin = bounds[yy * 2], count = bounds[yy * 2 + 1], k = yy * ksize;
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) {
          let sum = HALF;
          for (let y = 0; y < count; y++) sum += data[((ymin + y) * w + x) * 3 + c] * weights[k + y];
          out[(yy * w + x) * 3 + c] = clip8(sum);
        }
      }
    }
    data = out;
  }
  return data;
}

// (width, height) after the shortest-edge resize: the long edge truncated (transformers' rule).
function outputSize(width, height, shortest) {
  if (width <= height) return [shortest, Math.trunc(shortest * height / width)];
  return [Math.trunc(shortest * width / height), shortest];
}

const tables = new Map();
function levelTable(spec) {
  const key = JSON.stringify([spec.rescale_factor, spec.mean, spec.std]);
  if (!tables.has(key)) {
    const table = new Float32Array(3 * 256);
    for (let c = 0; c < 3; c++) {
      const mean = Math.fround(spec.mean[c]), std = Math.fround(spec.std[c]);
      for (let v = 0; v < 256; v++) {
        table[c * 256 + v] = Math.fround(Math.fround(Math.fround(v * spec.rescale_factor) - mean) / std);
      }
    }
    tables.set(key, table);
  }
  return tables.get(key);
}

// Decoded RGB bytes of a Blob: EXIF orientation applied, no colour-space conversion, transparency on white;
// with thumbnail > 0, also a JPEG of the photo whose longest edge is that many pixels (at most).
export async function decode(blob, thumbnail = 0) {
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" });
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  let thumb = null;
  if (thumbnail > 0) {
    const scale = Math.min(1, thumbnail / Math.max(width, height));
    const small = new OffscreenCanvas(Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale)));
    const smallContext = small.getContext("2d");
    smallContext.imageSmoothingQuality = "high";
    smallContext.drawImage(bitmap, 0, 0, small.width, small.height);
    thumb = await small.convertToBlob({ type: "image/jpeg", quality: 0.85 });
  }
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    const a = rgba[i + 3];
    if (a === 255) {
      rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
    } else {
      for (let c = 0; c < 3; c++) rgb[j + c] = Math.round((rgba[i + c] * a + 255 * (255 - a)) / 255);
    }
  }
  return { rgb, width, height, thumb };
}

// float32 [3, size, size] written into `out` at `offset` from an 8-bit square already resized and cropped
// (HWC RGB, size x size): the lookups alone, as the Python runtime's normalize().
export function normalizeSquare(square, spec, out, offset) {
  const table = levelTable(spec);
  const plane = spec.size * spec.size;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) out[offset + c * plane + i] = table[c * 256 + square[i * 3 + c]];
  }
}

// float32 [3, size, size] written into `out` at `offset`: the tower's input for one decoded image.
export function pixelValues({ rgb, width, height }, spec, out, offset) {
  const [w, h] = outputSize(width, height, spec.shortest_edge);
  const resized = resize(rgb, width, height, w, h, spec.resample);
  const size = spec.size;
  const table = levelTable(spec);
  const plane = size * size;
  // Center crop (offsets rounded down), or zero padding with the larger half before the image.
  const top = h >= size ? (h - size) >> 1 : -((size - h + 1) >> 1);
  const left = w >= size ? (w - size) >> 1 : -((size - w + 1) >> 1);
  for (let y = 0; y < size; y++) {
    const sy = y + top;
    for (let x = 0; x < size; x++) {
      const sx = x + left;
      const inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
      for (let c = 0; c < 3; c++) {
        const level = inside ? resized[(sy * w + sx) * 3 + c] : 0;
        out[offset + c * plane + y * size + x] = table[c * 256 + level];
      }
    }
  }
}
