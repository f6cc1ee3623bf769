"""Publishing a bundle: ``altclip-onnx push`` to the Hugging Face Hub (:mod:`.push`) with the model card
:mod:`.card` writes from the manifest. Needs the ``[hub]`` extra to upload; never torch."""

from __future__ import annotations

from .card import model_card
from .push import MODEL_CARD, PushPlan, plan_push, push_bundle

__all__ = ["MODEL_CARD", "PushPlan", "model_card", "plan_push", "push_bundle"]
