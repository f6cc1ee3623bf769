// A transformers.js user, in Node: load a converted folder with transformers.js' own classes and embed.
//
//   node transformers_js_client.mjs REQUEST.json      (prints one JSON object on stdout)
//
// REQUEST: {"model": folder, "dtype": "fp32"|"q8"|"fp16", "texts": [...], "pixels": {"path": raw float32
// file, "dims": [N, 3, S, S]}, "images": [image files for its own processor], "pixels_out": file to write
// its own processor's pixel_values to (raw float32)}. Every field but "model" is optional.
import fs from 'node:fs';
import {
    env,
    AutoTokenizer,
    AutoProcessor,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
    RawImage,
    Tensor,
} from '@huggingface/transformers';

env.allowRemoteModels = false; // a local folder only: nothing may come from the network
env.useFSCache = false;

const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = {};
const dtype = request.dtype ?? 'fp32';
const rows = (tensor) => {
    const [n, d] = tensor.dims;
    return Array.from({ length: n }, (_, i) => Array.from(tensor.data.slice(i * d, (i + 1) * d)));
};

if (request.texts) {
    const tokenizer = await AutoTokenizer.from_pretrained(request.model);
    out.input_ids = request.texts.map((text) => Array.from(tokenizer(text).input_ids.data, Number));
    const model = await CLIPTextModelWithProjection.from_pretrained(request.model, { dtype, device: 'cpu' });
    const batch = tokenizer(request.texts, { padding: true, truncation: true });
    out.batch_input_ids = rows(batch.input_ids).map((r) => r.map(Number));
    out.batch_attention_mask = rows(batch.attention_mask).map((r) => r.map(Number));
    out.text_embeds = rows((await model(batch)).text_embeds);
    await model.dispose();
}

if (request.pixels || request.images) {
    const model = await CLIPVisionModelWithProjection.from_pretrained(request.model, { dtype, device: 'cpu' });
    if (request.pixels) {
        const buffer = fs.readFileSync(request.pixels.path);
        const data = new Float32Array(buffer.buffer, buffer.byteOffset, buffer.byteLength / 4);
        const pixel_values = new Tensor('float32', data, request.pixels.dims);
        out.image_embeds = rows((await model({ pixel_values })).image_embeds);
    }
    if (request.images) {
        const processor = await AutoProcessor.from_pretrained(request.model);
        const images = await Promise.all(request.images.map((file) => RawImage.read(file)));
        const { pixel_values } = await processor(images);
        if (request.pixels_out) fs.writeFileSync(request.pixels_out, Buffer.from(pixel_values.data.buffer));
        out.own_pixel_dims = pixel_values.dims;
        out.own_image_embeds = rows((await model({ pixel_values })).image_embeds);
    }
    await model.dispose();
}

process.stdout.write(JSON.stringify(out));
