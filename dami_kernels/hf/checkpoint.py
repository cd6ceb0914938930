"""Read a local Hugging Face checkpoint directory without building a model.

Weights: safetensors, single (`model.safetensors`) or sharded (`model.safetensors.index.json`). Pickle
weights (`pytorch_model.bin`, sharded or not) are refused unless `allow_pickle=True`, because unpickling
can run code. Tensors are streamed one file at a time; a truncated or corrupt file is a ValueError that
names it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PretrainedConfig

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE_SINGLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
WEIGHT_INDEX_NAMES = (SAFE_INDEX, PICKLE_INDEX)


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one stored tensor, read from the file header."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Checkpoint:
    """A checkpoint directory: config, weight files and (lazily) the name -> spec map of its tensors."""

    path: Path
    config: PretrainedConfig
    files: list[Path]
    fmt: str  # "safetensors" or "pickle"
    _specs: dict[str, TensorSpec] | None = field(default=None, repr=False)
    _file_of: dict[str, Path] | None = field(default=None, repr=False)
    _pickle_cache: tuple[Path, dict] | None = field(default=None, repr=False)

    def specs(self) -> dict[str, TensorSpec]:
        """name -> TensorSpec for every stored tensor (headers only for safetensors)."""
        if self._specs is None:
            specs, file_of = {}, {}
            for f in self.files:
                for name, spec in _file_specs(f, self.fmt).items():
                    if name in specs:
                        raise ValueError(f"{self.path}: tensor {name!r} is stored in two files "
                                         f"({file_of[name].name}, {f.name})")
                    specs[name], file_of[name] = spec, f
            self._specs, self._file_of = specs, file_of
        return self._specs

    def file_of(self, name: str) -> Path:
        self.specs()
        return self._file_of[name]

    def iter_files(self) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
        """Yield (file, {name: tensor on CPU}) one weight file at a time."""
        for f in self.files:
            yield f, load_file_tensors(f, self.fmt)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor on CPU) one tensor at a time (one pickle file at a time)."""
        for f in self.files:
            if self.fmt != "safetensors":
                yield from load_file_tensors(f, self.fmt).items()
                continue
            try:
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        yield k, h.get_tensor(k)
            except SafetensorError as err:
                raise ValueError(f"{f}: corrupt or truncated safetensors file ({err})") from err

    def get_tensor(self, name: str) -> torch.Tensor:
        """One tensor by name (for safetensors, without reading the rest of its file)."""
        f = self.file_of(name)
        if self.fmt == "safetensors":
            try:
                with safe_open(str(f), framework="pt") as h:
                    return h.get_tensor(name)
            except SafetensorError as err:
                raise ValueError(f"{f}: corrupt or truncated safetensors file ({err})") from err
        if self._pickle_cache is None or self._pickle_cache[0] != f:  # keep the last pickle file loaded
            self._pickle_cache = (f, load_file_tensors(f, self.fmt))
        return self._pickle_cache[1][name]

    def float_dtype(self) -> torch.dtype:
        """The dtype of the first floating-point tensor (the checkpoint's storage dtype)."""
        for spec in self.specs().values():
            if spec.dtype.is_floating_point:
                return spec.dtype
        raise ValueError(f"{self.path}: the checkpoint holds no floating-point tensor")


def open_checkpoint(path, *, allow_pickle: bool = False) -> Checkpoint:
    """Open a local HF checkpoint directory: config plus the list of weight files (not read yet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"checkpoint path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path / 'config.json'}: cannot read the config ({err})") from err
    if (path / SAFE_INDEX).is_file():
        return Checkpoint(path, config, _index_files(path, SAFE_INDEX), "safetensors")
    if (path / SAFE_SINGLE).is_file():
        return Checkpoint(path, config, [path / SAFE_SINGLE], "safetensors")
    pickle_files = _index_files(path, PICKLE_INDEX) if (path / PICKLE_INDEX).is_file() else (
        [path / PICKLE_SINGLE] if (path / PICKLE_SINGLE).is_file() else [])
    if pickle_files:
        if not allow_pickle:
            raise ValueError(
                f"{path} has only pickle weights ({pickle_files[0].name}); unpickling can run arbitrary "
                "code, so it is refused. Convert it to safetensors, or pass allow_pickle=True if you "
                "trust the source"
            )
        return Checkpoint(path, config, pickle_files, "pickle")
    raise ValueError(f"{path} holds no weights ({SAFE_SINGLE}, {SAFE_INDEX}, {PICKLE_SINGLE} or {PICKLE_INDEX})")


def _index_files(path: Path, index_name: str) -> list[Path]:
    try:
        weight_map = json.loads((path / index_name).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path / index_name}: not a valid weight index ({err})") from err
    files = [path / name for name in sorted(set(weight_map.values()))]
    for f in files:
        if not f.is_file():
            raise ValueError(f"{path / index_name} lists shard {f.name}, which is missing")
    return files


def _file_specs(f: Path, fmt: str) -> dict[str, TensorSpec]:
    if fmt == "safetensors":
        try:
            with safe_open(str(f), framework="pt") as h:
                return {k: _slice_spec(h.get_slice(k)) for k in h.keys()}
        except SafetensorError as err:
            raise ValueError(f"{f}: corrupt or truncated safetensors file ({err})") from err
    return {k: TensorSpec(tuple(t.shape), t.dtype) for k, t in load_file_tensors(f, fmt).items()}


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def _slice_spec(sl) -> TensorSpec:
    dtype = sl.get_dtype()
    if dtype not in _ST_DTYPES:
        raise ValueError(f"unsupported safetensors dtype {dtype}")
    return TensorSpec(tuple(sl.get_shape()), _ST_DTYPES[dtype])


def load_file_tensors(f: Path, fmt: str) -> dict[str, torch.Tensor]:
    """All tensors of one weight file on the CPU."""
    if fmt == "safetensors":
        try:
            with safe_open(str(f), framework="pt") as h:
                return {k: h.get_tensor(k) for k in h.keys()}
        except SafetensorError as err:
            raise ValueError(f"{f}: corrupt or truncated safetensors file ({err})") from err
    try:
        # weights_only limits what unpickling may build; the caller opted in to pickle explicitly.
        return torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(f"{f}: cannot read pickle weights ({err})") from err
