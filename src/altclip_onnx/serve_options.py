"""How a service is configured (:mod:`altclip_onnx.serve`): one frozen dataclass that owns its defaults and
checks its values, and the per-request limits.

Outside the serve package, whose modules need the ``[serve]`` extra, so that ``altclip-onnx serve`` can take
its defaults from here while ``--help`` works without the extra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import InputError
from .runtime.pipeline import DECODE_WORKERS

# Per-request limits (documented in README; each refused with a 400 naming it).
MAX_TEXTS = 2048  # texts per /v1/embeddings request (OpenAI's own limit)
MAX_TEXT_CHARS = 20_000  # characters per text (the tokenizer keeps the first max_length tokens anyway)
MAX_IMAGES = 64  # images per request (/v1/embeddings, /v1/classify)
MAX_LABELS = 1000  # labels per /v1/classify request
MAX_TEMPLATES = 64  # templates per /v1/classify request
MAX_K = 1000  # results per /v1/search
THUMBNAIL_SIZE = 256  # longest edge of /v1/thumbnails/{id}, in pixels


MB = 1024 * 1024


def default_held_bytes() -> int:
    """Bytes of request bodies held at once by default: 32 MB, or a sixteenth of this machine's memory when that
    is less (8 MB at least). A body costs about three times its size while its request runs (the body, its
    parsed JSON, the decoded bytes). More than 32 MB rarely helps: the one event loop reads every body held,
    and in a burst what it reads beyond what the image tower can take in time is refused anyway, after
    delaying everything else (measured in benchmarks/README.md, "Burst")."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 4096 * MB
    return int(min(32 * MB, max(8 * MB, memory // 16)))


@dataclass(frozen=True)
class ServeOptions:
    """``max_batch``: most inputs per model call; ``max_wait_ms``: how long a model call waits for more
    requests to join it; ``max_body_bytes``: request bodies above this are refused (413) before being read
    whole; ``max_pixels``: images above this many pixels are refused (413) from their header;
    ``workers``: threads that decode images; ``api_key``: when set, every /v1/ request needs
    ``Authorization: Bearer <key>``; ``cors_origins``: origins allowed to call from a browser (none: CORS off);
    ``classifier_cache``: label sets whose text classifier is kept; ``thumbnail_cache``: thumbnails kept;
    ``max_held_bytes``: request bodies over 64 KB held at once, in bytes (a body that would pass it is refused
    with a 429 from its Content-Length, unread); ``max_queued_texts``, ``max_queued_images``: inputs a tower
    takes on at once (more: 429); ``max_queue_seconds``: the most seconds of work, at the tower's measured speed, a
    tower takes on (more: 429); ``request_timeout``: a request's deadline in seconds unless it sends
    ``X-Request-Timeout`` (work still waiting then is dropped, 504);
    ``shutdown_grace``: seconds requests in flight may take to finish after SIGTERM (then each gets a 503)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_request_pixels: int = 200_000_000  # 16 photos of 12 MP; about 3 s of decoding on 2 cores
    workers: int = DECODE_WORKERS
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    classifier_cache: int = 64
    thumbnail_cache: int = 1024
    shutdown_grace: float = 30.0
    max_held_bytes: int = field(default_factory=default_held_bytes)
    max_queued_texts: int = 8192  # four requests of OpenAI's 2048; about 0.5 MB of tokens
    max_queued_images: int = 256  # 150 MB of pixels at 224 x 224 once decoded
    max_queue_seconds: float = 10.0
    request_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_body_bytes", "max_pixels", "max_request_pixels", "workers", "max_held_bytes",
                     "max_queued_texts", "max_queued_images"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_queue_seconds", "request_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be more than 0, not {getattr(self, name)}")
        if self.shutdown_grace < 0:
            raise InputError(f"shutdown_grace must be 0 or more, not {self.shutdown_grace}")
        if self.max_wait_ms < 0:
            raise InputError(f"max_wait_ms must be 0 or more, not {self.max_wait_ms}")
        if self.api_key is not None and not self.api_key:
            raise InputError("api_key is empty; give None for no key")
