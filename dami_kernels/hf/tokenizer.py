"""Load the pair's tokenizer (the Instruct one), never running code shipped with a checkpoint.

The Thinking side's tokenizer must be the same (vocabulary, special tokens, chat template): a difference is a
ValueError naming it, unless the caller opts out (allow_tokenizer_mismatch=True, then a warning)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "added_tokens.json",
)


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

    from dami_kernels.hf.checkpoint import side_files

    path = Path(path)
    if path.is_dir():
        side_files(path)  # no symlink out of the directory, no FIFO or device: checked before any file is opened
        if not has_tokenizer(path):  # transformers would build a tokenizer of one token from the config alone
            raise ValueError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
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


def _show(value) -> str:
    return "absent" if value is None else repr(value)


def tokenizer_difference(tok_i, tok_t, name_i="the instruct tokenizer", name_t="the thinking one") -> str | None:
    """The first difference between two tokenizers, as one line, or None: the vocabulary (the first token id
    whose token differs, with both strings), the special tokens, then the chat template."""
    vi, vt = tok_i.get_vocab(), tok_t.get_vocab()
    if vi != vt:
        by_i, by_t = {}, {}
        for by, vocab in ((by_i, vi), (by_t, vt)):
            for token, idx in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])):
                by.setdefault(idx, token)
        for idx in sorted(set(by_i) | set(by_t)):
            if by_i.get(idx) != by_t.get(idx):
                return (
                    f"token id {idx} is {_show(by_i.get(idx))} in {name_i} but {_show(by_t.get(idx))} in "
                    f"{name_t} ({len(vi)} and {len(vt)} tokens)"
                )
        token = next(t for t in sorted(set(vi) | set(vt)) if vi.get(t) != vt.get(t))  # one token, two ids
        return f"token {token!r} has id {_show(vi.get(token))} in {name_i} but {_show(vt.get(token))} in {name_t}"
    si, st = tok_i.special_tokens_map, tok_t.special_tokens_map
    for key in sorted(set(si) | set(st)):
        if si.get(key) != st.get(key):
            return f"special token {key!r} is {_show(si.get(key))} in {name_i} but {_show(st.get(key))} in {name_t}"
    ai, at = getattr(tok_i, "added_tokens_decoder", {}), getattr(tok_t, "added_tokens_decoder", {})
    for idx in sorted(set(ai) | set(at)):
        special_i, special_t = (bool(getattr(d.get(idx), "special", False)) for d in (ai, at))
        if special_i != special_t:
            token = str(ai.get(idx) or at.get(idx))
            return (
                f"token id {idx} ({token!r}) is {'' if special_i else 'not '}special in {name_i} but "
                f"{'' if special_t else 'not '}special in {name_t}"
            )
    ci, ct = getattr(tok_i, "chat_template", None), getattr(tok_t, "chat_template", None)
    if ci != ct:
        if isinstance(ci, str) and isinstance(ct, str):
            k = next((n for n, (a, b) in enumerate(zip(ci, ct, strict=False)) if a != b), min(len(ci), len(ct)))
            return (
                f"the chat templates differ from character {k} on ({ci[k : k + 40]!r} in {name_i}, "
                f"{ct[k : k + 40]!r} in {name_t})"
            )
        if isinstance(ci, dict) and isinstance(ct, dict):
            key = next(n for n in sorted(set(ci) | set(ct)) if ci.get(n) != ct.get(n))
            return f"the chat templates differ: template {key!r} differs between {name_i} and {name_t}"
        kind = {type(None): "none", str: "one template", dict: "named templates"}
        return (
            f"the chat templates differ ({kind.get(type(ci), type(ci).__name__)} in {name_i}, "
            f"{kind.get(type(ct), type(ct).__name__)} in {name_t})"
        )
    return None


def _mismatch(what: str, allow_tokenizer_mismatch: bool, instruct_dir) -> None:
    """Refuse a tokenizer mismatch, or (opted out) warn and go on with the instruct tokenizer."""
    if not allow_tokenizer_mismatch:
        raise ValueError(f"{what}; pass allow_tokenizer_mismatch=True to use the instruct tokenizer anyway")
    warnings.warn(
        f"{what}; using the instruct tokenizer of {instruct_dir} (allow_tokenizer_mismatch=True)", stacklevel=3
    )


def load_tokenizer(instruct_dir, thinking_dir=None, *, allow_tokenizer_mismatch: bool = False):
    """The Instruct tokenizer; with thinking_dir, the Thinking directory's tokenizer must be the same.

    A Thinking tokenizer that differs (vocabulary, special tokens or chat template) or cannot be loaded is a
    ValueError naming the first difference (for the vocabulary: the token id and both tokens); with
    allow_tokenizer_mismatch=True it is a warning and the Instruct tokenizer is used. Never runs code from
    the checkpoint (trust_remote_code=False; an auto_map is refused). A corrupt tokenizer file, or one that is
    not a regular file or points outside its directory, is a ValueError naming the file.
    """
    tok = _load_one(instruct_dir)
    if thinking_dir is not None:
        try:
            tok_t = _load_one(thinking_dir)
        except (OSError, ValueError) as err:
            _mismatch(
                f"cannot load the tokenizer of {thinking_dir} to compare it with the instruct one "
                f"({' '.join(str(err).split())})",
                allow_tokenizer_mismatch,
                instruct_dir,
            )
            return tok
        diff = tokenizer_difference(tok, tok_t, str(instruct_dir), str(thinking_dir))
        if diff is not None:
            _mismatch(f"the tokenizers differ: {diff}", allow_tokenizer_mismatch, instruct_dir)
    return tok


def has_tokenizer(path) -> bool:
    """Whether checkpoint directory `path` holds tokenizer files."""
    path = Path(path)
    return any(
        (path / name).exists() or (path / name).is_symlink() for name in TOKENIZER_FILES + ("vocab.txt", "merges.txt")
    ) or any(any(path.glob(pattern)) for pattern in ("*.model", "*.tiktoken"))


def check_tokenizers(instruct_dir, thinking_dir, *, allow_tokenizer_mismatch: bool = False) -> None:
    """The tokenizer comparison of `load_tokenizer`, for `merge_pair` (which copies the Instruct tokenizer files):
    a pair where neither side has a tokenizer has nothing to compare."""
    if has_tokenizer(instruct_dir):
        load_tokenizer(instruct_dir, thinking_dir, allow_tokenizer_mismatch=allow_tokenizer_mismatch)
    elif has_tokenizer(thinking_dir):
        _mismatch(
            f"the tokenizers differ: {instruct_dir} has no tokenizer but {thinking_dir} has one",
            allow_tokenizer_mismatch,
            instruct_dir,
        )
