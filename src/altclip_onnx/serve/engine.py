"""The model behind the service: an :class:`~altclip_onnx.Encoder`, a :class:`~.batcher.Batcher` per tower,
threads that decode images, and the text classifiers of recent label sets.

Everything here computes exactly what the Encoder computes for the same inputs (the same tokenizer,
preprocessing, sessions and classifier recipe); only the grouping into model calls differs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from ..bundle import TEXTUAL, VISUAL
from ..runtime.encoder import Encoder, Prompts
from . import admission, priority
from .admission import Gate
from .arrivals import Arrivals, current
from .batcher import Batcher, BatchObserver
from .media import check_request_pixels, image_pixels
from ..serve_options import ServeOptions

T = TypeVar("T")


class Engine:
    """Embeddings and zero-shot probabilities for requests, batched across them (see the module docstring)."""

    def __init__(self, encoder: Encoder, options: ServeOptions, observer: BatchObserver | None = None) -> None:
        self.encoder = encoder
        self.options = options
        # Request bodies (JSON, base64, image headers) are parsed in one thread: parsing holds the GIL, and
        # with several parsing threads the event loop would wait its turn behind all of them.
        self.parsing = ThreadPoolExecutor(1, thread_name_prefix="altclip-parse")
        # image work runs at a lower CPU priority than the event loop and the text tower (see .priority)
        self.decoder = ThreadPoolExecutor(options.workers, thread_name_prefix="altclip-decode",
                                          initializer=priority.lower_this_thread)
        self.arrivals = Arrivals()
        self.gates = {TEXTUAL: Gate(TEXTUAL, max_inputs=options.max_queued_texts, max_seconds=options.max_queue_seconds),
                      VISUAL: Gate(VISUAL, max_inputs=options.max_queued_images, max_seconds=options.max_queue_seconds,
                                   parallel=options.workers, on_idle=admission.Trimmer())}
        observer = _Observers(observer, self.gates)
        wait = options.max_wait_ms / 1000
        self.texts = Batcher(TEXTUAL, self._run_texts, max_batch=options.max_batch, max_wait=wait, observer=observer,
                             arriving=lambda: self.arrivals.waiting_for(TEXTUAL))
        self.images = priority.lowering_new_threads(lambda: Batcher(
            VISUAL, self._run_pixels, max_batch=options.max_batch, max_wait=wait, observer=observer,
            arriving=lambda: self.arrivals.waiting_for(VISUAL)))
        self.arrivals.listen(self.texts.wake)
        self.arrivals.listen(self.images.wake)
        self._shrink = _arena_shrinkage()
        self._classifiers: OrderedDict[Prompts, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load both sessions and the tokenizer now (once), so the first request does not pay for it and a
        broken bundle, or one that fails its first-use check here, fails at start-up."""
        priority.lowering_new_threads(lambda: self.encoder.session(VISUAL))  # its onnxruntime thread pool
        self.encoder.session(TEXTUAL)
        self.encoder.tokenizer  # noqa: B018  (loads it)

    def close(self) -> None:
        """Finish the jobs already submitted, then stop the worker threads."""
        self.texts.close()
        self.images.close()
        self.decoder.shutdown(wait=True)
        self.parsing.shutdown(wait=True)

    async def off_loop(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in the parsing thread."""
        return await asyncio.get_running_loop().run_in_executor(self.parsing, fn, *args)

    # --- what the worker threads run --------------------------------------------------------------

    def _run_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.encoder.encode_texts(texts, batch_size=self.options.max_batch)
        return vectors, self.encoder.token_counts(texts)

    def _run_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        # The last batch of a burst (nothing queued behind it) hands onnxruntime's CPU arena back down to its
        # first chunk: the arena otherwise keeps the largest batch's activations (hundreds of MB at full size).
        shrink = self._shrink if self.images.depth == 0 else None
        return self.encoder.encode_pixels(np.stack(pixels), run_options=shrink)

    # --- for requests (on the event loop) ---------------------------------------------------------

    async def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """float32 [N, D] normalized embeddings and the token count of each text."""
        with self.gates[TEXTUAL].admit(len(texts)):
            _arrived(TEXTUAL)
            parts = await self.texts.submit_all(list(texts), admission.deadline())
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    async def decode(self, images: Sequence[tuple[bytes, str]]) -> list[np.ndarray]:
        """Each (bytes, name) as pixel values, in the decoding threads; the first bad image's ApiError."""
        loop = asyncio.get_running_loop()
        spec, limit = self.encoder.manifest.image, self.options.max_pixels
        param = images[0][1].split("[")[0] if images else "input"
        # headers only, in the parsing thread: a queue of decoding never delays a refusal
        await self.off_loop(check_request_pixels, images, limit, self.options.max_request_pixels, param)
        tasks = [loop.run_in_executor(self.decoder, self._decode_one, data, spec, limit, where, admission.deadline())
                 for data, where in images]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # after a failure, the others' results (or errors) are not wanted
                if not task.done():
                    task.cancel()

    def _decode_one(self, data: bytes, spec: object, limit: int, where: str, deadline: float | None) -> np.ndarray:
        if deadline is not None and time.monotonic() > deadline:
            raise admission.expired("image decoding")  # dropped: nobody waits for it any more
        started = time.perf_counter()
        pixels = image_pixels(data, spec, limit, where)  # type: ignore[arg-type]
        self.gates[VISUAL].observe_decode(time.perf_counter() - started)
        return pixels

    async def embed_images(self, images: Sequence[tuple[bytes, str]]) -> np.ndarray:
        """float32 [N, D] normalized embeddings of images given as (bytes, name for messages)."""
        with self.gates[VISUAL].admit(len(images)):
            pixels = await self.decode(images)
            _arrived(VISUAL)
            return np.concatenate(await self.images.submit_all(pixels, admission.deadline()))

    async def classifier(self, labels: Sequence[str], templates: Sequence[str] | None) -> np.ndarray:
        """[labels, D]: :meth:`Encoder.text_classifier`'s recipe (:class:`Prompts`), its texts batched with
        other requests' and the result kept for the next request with the same labels and templates."""
        key = Prompts.of(labels, templates)
        with self._lock:
            if key in self._classifiers:
                self._classifiers.move_to_end(key)
                _arrived(TEXTUAL)  # nothing for the text tower after all
                return self._classifiers[key]
        vectors, _ = await self.embed_texts(key.texts)
        classifier = key.classifier(vectors)
        with self._lock:
            self._classifiers[key] = classifier
            while len(self._classifiers) > self.options.classifier_cache:
                self._classifiers.popitem(last=False)
        return classifier

    def probabilities(self, image_embeds: np.ndarray, classifier: np.ndarray) -> np.ndarray:
        return self.encoder.probabilities(image_embeds, classifier)


class _Observers:
    """What the batchers report, to the metrics and to the gates (which learn each tower's speed from it)."""

    def __init__(self, metrics: BatchObserver | None, gates: dict[str, Gate]) -> None:
        self.metrics = metrics
        self.gates = gates

    def batch(self, name: str, size: int, jobs: int, seconds: float) -> None:
        self.gates[name].observe(size, seconds)
        if self.metrics is not None:
            self.metrics.batch(name, size, jobs, seconds)

    def queued(self, name: str, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.queued(name, depth)


def _arena_shrinkage() -> object:
    """onnxruntime RunOptions that shrink the CPU memory arena after the run."""
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _arrived(tower: str) -> None:
    ticket = current()
    if ticket is not None:
        ticket.submitted(tower)
