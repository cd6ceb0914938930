"""Shared test utility: tiny random Instruct/Thinking pairs saved as HF checkpoints, plus a tokenizer.

`make_pair(instruct_dir, thinking_dir, arch=...)` builds one random base model from a tiny config and
perturbs EVERY tensor (norm gains included) differently per side, then saves both sides with
`save_pretrained` and a small character-level tokenizer with a chat template. Architectures: "qwen3"
(tied embeddings, q/k norms), "llama" (untied), "qwen2" (attention biases), "mistral", "phi3" (fused
qkv and gate_up projections), "gemma3" (text model: 1 + w norms, scaled embeddings, tied) and
"qwen3_moe" (4 experts, top-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

SPECIALS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,?!:+-=\n") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = 100
PAD_ID, BOS_ID, EOS_ID = 0, 1, 3  # <|pad|>, <|endoftext|>, <|im_end|>


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A character-level tokenizer of len(SPECIALS) + len(CHARS) (< VOCAB) tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    tok.chat_template = chat_template
    return tok


def tiny_config(arch: str = "qwen3", **overrides):
    """Tiny config: hidden 32, 2 layers, 4 heads of 8 (2 KV heads), vocab 100, fp32."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    classes = {
        "qwen3": (Qwen3Config, dict(head_dim=8, tie_word_embeddings=True)),
        "llama": (LlamaConfig, dict(head_dim=8, tie_word_embeddings=False)),
        "qwen2": (Qwen2Config, dict(tie_word_embeddings=False)),
        "mistral": (MistralConfig, dict(head_dim=8, tie_word_embeddings=False, sliding_window=16)),
        "phi3": (Phi3Config, dict(tie_word_embeddings=False)),  # fused qkv_proj and gate_up_proj
        # (1 + w) RMSNorm, scaled embeddings, tied lm_head, sliding + full attention layers
        "gemma3": (
            Gemma3TextConfig,
            dict(
                head_dim=8,
                tie_word_embeddings=True,
                sliding_window=4,
                query_pre_attn_scalar=8,
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
        # fused experts [E, 2I, H] / [E, H, I] (stored per expert, fused by transformers at load)
        "qwen3_moe": (
            Qwen3MoeConfig,
            dict(
                head_dim=8,
                moe_intermediate_size=24,
                num_experts=4,
                num_experts_per_tok=2,
                norm_topk_prob=True,
                tie_word_embeddings=True,
            ),
        ),
    }
    if arch not in classes:
        raise ValueError(f"unknown arch {arch!r}")
    cls, extra = classes[arch]
    cfg = cls(**{**common, **extra, **overrides})
    return cfg


def random_base(arch: str = "qwen3", seed: int = 0, **overrides):
    """A from_config model (fp32) with random weights, eval mode, and norm gains randomized too."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def perturbed(base, seed: int, scale: float = 0.5):
    """A copy of `base` with every parameter perturbed by scale·max(std(param), 0.05)·N(0, 1)."""
    model = AutoModelForCausalLM.from_config(base.config, dtype=torch.float32)
    model.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied parameters are visited once
            noise = torch.randn(p.shape, generator=gen)
            p.add_(scale * max(float(p.float().std()), 0.05) * noise)
    return model.eval()


@dataclass
class PairPaths:
    instruct: Path
    thinking: Path


def make_pair(
    instruct_dir,
    thinking_dir,
    arch: str = "qwen3",
    *,
    seed: int = 0,
    dtype=torch.float32,
    max_shard_size=None,
    chat_template: str | None = CHAT_TEMPLATE,
    **overrides,
) -> PairPaths:
    """Build a random base, perturb it per side, and save both sides (+ tokenizer, generation config)."""
    base = random_base(arch, seed, **overrides)
    tok = build_tokenizer(chat_template)
    out = PairPaths(Path(instruct_dir), Path(thinking_dir))
    for k, path in enumerate((out.instruct, out.thinking)):
        model = perturbed(base, seed * 1000 + 17 + k).to(dtype)
        model.generation_config = GenerationConfig(
            eos_token_id=model.config.eos_token_id, pad_token_id=PAD_ID, bos_token_id=BOS_ID
        )
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(str(path), **kwargs)
        tok.save_pretrained(str(path))
    return out


def load_side(path, dtype=torch.float32):
    """A plain HF model from one saved side (eval mode)."""
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def merged_fp64_model(instruct_dir, thinking_dir, lam: float):
    """The test oracle: a plain fp32 HF model whose every tensor is (1-λ)·I + λ·T computed in fp64."""
    mi, mt = load_side(instruct_dir), load_side(thinking_dir)
    sd_t = mt.state_dict()
    with torch.no_grad():
        for name, p in list(mi.named_parameters()) + list(mi.named_buffers()):  # tied tensors once
            if p.is_floating_point() and name in sd_t:
                p.copy_(((1.0 - lam) * p.double() + lam * sd_t[name].double()).to(p.dtype))
    return mi


_CACHE: dict = {}


def cached_pair(arch: str = "qwen3", **kwargs) -> PairPaths:
    """make_pair into a per-process temporary directory, built once per (arch, kwargs); removed at exit."""
    import atexit
    import shutil
    import tempfile

    key = (arch, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix=f"dami_pair_{arch}_"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _CACHE[key] = make_pair(root / "instruct", root / "thinking", arch, **kwargs)
    return _CACHE[key]


def copy_pair(tmp_path, arch: str = "qwen3", names=("instruct", "thinking")) -> list[Path]:
    """A fresh copy of the cached pair of `arch` under tmp_path/<names> (to damage in a test)."""
    import shutil

    src = cached_pair(arch)
    out = []
    for name, path in zip(names, (src.instruct, src.thinking), strict=True):
        shutil.copytree(path, tmp_path / name)
        out.append(tmp_path / name)
    return out


def hub_snapshot(src, repo: Path) -> Path:
    """A Hugging Face hub cache layout of checkpoint `src`: repo/snapshots/REV/* symlinks into repo/blobs/."""
    import shutil

    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in Path(src).iterdir():
        shutil.copy(f, blobs / f"sha-{f.name}")
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f"sha-{f.name}")
    return snap


def both_refuse(dirs, tmp_path, match: str) -> None:
    """load_pair and merge_pair both raise a ValueError matching `match`; the merge wrote nothing."""
    import pytest

    import dami_kernels as dk

    with pytest.raises(ValueError, match=match):
        dk.load_pair(*dirs, progress=False)
    with pytest.raises(ValueError, match=match):
        dk.merge_pair(*dirs, 0.5, tmp_path / "merged", progress=False)
    assert not (tmp_path / "merged").exists()
