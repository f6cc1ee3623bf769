"""Tiny AltCLIP checkpoints, built on disk in both layouts, and a tiny bundle exported once.

The weights are random but input-sensitive (see ``init_input_sensitive``), and the tokenizer is a
real sentencepiece unigram model trained here on text in many languages, so the checkpoints go
through exactly the loading code that real ones take.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from altclip_onnx.export.sources import init_input_sensitive
from altclip_onnx.export.verify import SENTENCES

CORPUS_EXTRA = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A dog runs on the beach at sunset, and children play in the waves.",
    "我们在海边看日落，天空是橙色的。猫和狗在花园里玩耍。",
    "東京の街は夜になると明るく輝きます。桜の花が咲いています。",
    "서울의 밤거리는 아름답습니다. 강아지가 공원에서 뛰어놉니다.",
    "Le chat dort sur le canapé pendant que le chien joue dehors.",
    "Der Hund spielt im Garten, und die Katze schläft auf dem Sofa.",
    "El perro corre por la playa y el gato duerme en casa.",
    "Кошка спит на диване, а собака играет во дворе.",
    "القطة نائمة على الأريكة والكلب يلعب في الحديقة",
    "कुत्ता बगीचे में खेल रहा है और बिल्ली सो रही है",
    "แมวกำลังนอนหลับอยู่บนโซฟาและสุนัขกำลังเล่นอยู่ในสวน",
    "Con mèo đang ngủ trên ghế sofa và con chó đang chơi trong vườn.",
    "Kedi kanepede uyuyor ve köpek bahçede oynuyor.",
    "Kot śpi na kanapie, a pies bawi się w ogrodzie.",
    "De kat slaapt op de bank en de hond speelt in de tuin.",
    "O gato dorme no sofá e o cachorro brinca no jardim.",
    "Il gatto dorme sul divano e il cane gioca in giardino.",
    "Кіт спить на дивані, а собака грається у дворі.",
    "Emoji 😀🐱🚀 and full-width ＡＢＣ１２３ text, tabs\tand\nnewlines.",
]

TINY_TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "project_dim": 24,
}
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 16,
}
TINY_PROJECTION = 16
WEIGHT_SEED = 1234


def corpus() -> list[str]:
    return list(SENTENCES.values()) * 3 + CORPUS_EXTRA * 3


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sentencepiece unigram model with XLM-R's special-piece layout (<unk>=0, <s>=1, </s>=2)."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_prefix=str(folder / "sp"),
        vocab_size=600,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    target = folder / "sentencepiece.bpe.model"
    (folder / "sp.model").rename(target)
    return target


def sp_vocab_size(spm_path: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_path)).get_piece_size()


def tiny_config(spm_path: Path):  # type: ignore[no-untyped-def]
    from transformers import AltCLIPConfig

    # XLM-R: sentencepiece ids shift by one (fairseq's <s>,<pad>,</s>,<unk> take 0..3) and <mask> comes last.
    text = dict(TINY_TEXT, vocab_size=sp_vocab_size(spm_path) + 2)
    return AltCLIPConfig(text_config=text, vision_config=dict(TINY_VISION), projection_dim=TINY_PROJECTION)


def tiny_model(spm_path: Path, seed: int = WEIGHT_SEED):  # type: ignore[no-untyped-def]
    from transformers import AltCLIPModel

    model = AltCLIPModel(tiny_config(spm_path))
    init_input_sensitive(model, seed)
    return model.eval()


def save_image_processor(folder: Path) -> None:
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": 224},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": 224, "width": 224},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "do_convert_rgb": True,
            }
        )
    )


@pytest.fixture(scope="session")
def transformers_checkpoint(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    """transformers' AltCLIP layout: config.json (model_type altclip), model.safetensors, tokenizer files."""
    from transformers import XLMRobertaTokenizer

    folder = tmp_path_factory.mktemp("ckpt") / "AltCLIP-tiny"
    tiny_model(spm_model).save_pretrained(folder)
    spm_dir = tmp_path_factory.mktemp("spmdir")
    shutil.copy(spm_model, spm_dir / "sentencepiece.bpe.model")
    XLMRobertaTokenizer.from_pretrained(spm_dir).save_pretrained(folder)
    save_image_processor(folder)
    return folder


def flagai_state_dict(model) -> dict:  # type: ignore[no-untyped-def]
    """The same weights under FlagAI's names, with the extra tensors FlagAI checkpoints carry."""
    gen = torch.Generator().manual_seed(7)
    hidden = model.config.text_config.hidden_size
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = re.sub(r"^text_model\.roberta\.encoder\.layers\.", "text_model.roberta.encoder.layer.", key)
        state[key] = value.clone()
    state["text_model.roberta.pooler.dense.weight"] = torch.randn(hidden, hidden, generator=gen)
    state["text_model.roberta.pooler.dense.bias"] = torch.randn(hidden, generator=gen)
    project = model.config.text_config.project_dim
    state["text_model.transformation_pre.weight"] = torch.randn(project, hidden, generator=gen)  # m18's diffusion head
    state["text_model.transformation_pre.bias"] = torch.randn(project, generator=gen)
    return state


def flagai_config(model) -> dict:  # type: ignore[no-untyped-def]
    text = dict(TINY_TEXT, vocab_size=model.config.text_config.vocab_size, model_type="xlm-roberta",
                architectures=["RobertaSeriesModelWithTransformation"], pooler_fn="cls", learn_encoder=False)
    return {
        "architectures": ["CLIPHF"],
        "model_type": "clip",
        "text_config": text,
        "vision_config": dict(TINY_VISION, model_type="clip_vision_model"),
        "projection_dim": TINY_PROJECTION,
        "logit_scale_init_value": 2.6592,
        "num_layers": 3,
        "variant": "invert",
        "text_config_dict": None,
        "vision_config_dict": None,
    }


@pytest.fixture(scope="session")
def flagai_checkpoint(tmp_path_factory: pytest.TempPathFactory, spm_model: Path) -> Path:
    """FlagAI's layout: CLIPConfig-style config, pytorch_model.bin with encoder.layer.N, sentencepiece only."""
    folder = tmp_path_factory.mktemp("ckpt") / "AltCLIP-m18-flagai-tiny"
    folder.mkdir()
    model = tiny_model(spm_model)
    torch.save(flagai_state_dict(model), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(flagai_config(model), indent=2))
    shutil.copy(spm_model, folder / "sentencepiece.bpe.model")
    save_image_processor(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, transformers_checkpoint: Path) -> Path:
    """The transformers-layout checkpoint exported (fp32, int8, fp16; verified) once per test session."""
    from altclip_onnx.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(str(transformers_checkpoint), out, ExportOptions(precisions=("fp32", "int8", "fp16")))
    return out
