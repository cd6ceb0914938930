"""Load the pair's tokenizer (the Instruct one), never running code shipped with a checkpoint."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "added_tokens.json")


def _refuse_custom_code(path: Path) -> None:
    f = path / "tokenizer_config.json"
    if not f.is_file():
        return
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{f}: not a valid tokenizer config ({type(err).__name__}: {err})") from None
    if isinstance(cfg, dict) and cfg.get("auto_map"):
        raise ValueError(f"{f} has an auto_map entry (custom tokenizer code); custom-code models are not supported")


def _load_one(path) -> object:
    """AutoTokenizer.from_pretrained(path) without remote code; a broken file is a ValueError naming it."""
    from transformers import AutoTokenizer

    path = Path(path)
    _refuse_custom_code(path)
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - tokenizers raises bare Exception for a broken tokenizer.json
        for name in TOKENIZER_FILES:  # name the file that broke, when it is one of the tokenizer's own
            f = path / name
            if f.is_file() and _broken_json(f):
                raise ValueError(f"{f}: corrupt tokenizer file ({type(err).__name__}: {err})") from None
        if "trust_remote_code" in str(err):
            raise ValueError(f"{path}: the tokenizer needs custom code; custom-code models are not supported") from None
        raise ValueError(f"{path}: cannot load the tokenizer ({type(err).__name__}: {err})") from err


def _broken_json(f: Path) -> bool:
    try:
        json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return True
    return False


def load_tokenizer(instruct_dir, thinking_dir=None):
    """The Instruct tokenizer; warns when the Thinking directory's tokenizer differs from it.

    Never runs code from the checkpoint (trust_remote_code=False; an auto_map is refused). A corrupt
    tokenizer file is a ValueError naming the file.
    """
    tok = _load_one(instruct_dir)
    if thinking_dir is not None:
        try:
            tok_t = _load_one(thinking_dir)
        except (OSError, ValueError) as err:
            warnings.warn(f"cannot load the tokenizer of {thinking_dir} to compare ({err}); using the instruct one",
                          stacklevel=2)
            return tok
        diffs = [what for what, a, b in (
            ("vocabulary", tok.get_vocab(), tok_t.get_vocab()),
            ("special tokens", tok.special_tokens_map, tok_t.special_tokens_map),
            ("chat template", getattr(tok, "chat_template", None), getattr(tok_t, "chat_template", None)),
        ) if a != b]
        if diffs:
            warnings.warn(f"the two tokenizers differ ({', '.join(diffs)}); using the instruct one from {instruct_dir}",
                          stacklevel=2)
    return tok
