"""Read a local Hugging Face checkpoint directory without building a model.

Weights: safetensors, single (`model.safetensors`) or sharded (`model.safetensors.index.json`). Pickle
weights (`pytorch_model.bin`, sharded or not) are refused unless `allow_pickle=True`, because unpickling
can run code. Tensors are streamed one file at a time; a truncated or corrupt file is a ValueError that
names it.

Nothing in a checkpoint runs code: configs load with trust_remote_code=False, and a config with an
`auto_map` (custom code) or a model type transformers does not know is refused. Every file the checkpoint
names (index shards, the weight file, symlinks among them) must lie inside its directory after resolving
symlinks; for a Hugging Face hub cache snapshot (``.../snapshots/REV``) the repository's ``blobs`` folder,
where the snapshot's symlinks point, counts as inside. The same holds for every other file of the directory
(config, generation config, chat template, tokenizer files: `side_files`, the one check for load and merge),
and each must be a regular file (no FIFO or device), checked before anything is opened. A weight file beside
its own index (`model.safetensors` and `model.safetensors.index.json`, likewise for pickle) is refused: two
sources of truth for the weights.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

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
                        raise ValueError(
                            f"{self.path}: tensor {name!r} is stored in two files ({file_of[name].name}, {f.name})"
                        )
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
    side_files(path)  # no file from outside the directory, no FIFO or device, before anything is opened
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    for single, index in ((SAFE_SINGLE, SAFE_INDEX), (PICKLE_SINGLE, PICKLE_INDEX)):
        if (path / single).exists() and (path / index).exists():
            raise ValueError(
                f"{path} holds both {single} and {index}, two sources of truth for the weights "
                f"(transformers would load {single}, the index names other files); keep one of them"
            )
    config = read_config(path)
    if (path / SAFE_INDEX).is_file():
        return Checkpoint(path, config, _index_files(path, SAFE_INDEX), "safetensors")
    if (path / SAFE_SINGLE).is_file():
        return Checkpoint(path, config, [confined(path, SAFE_SINGLE, path / SAFE_SINGLE)], "safetensors")
    pickle_files = (
        _index_files(path, PICKLE_INDEX)
        if (path / PICKLE_INDEX).is_file()
        else ([confined(path, PICKLE_SINGLE, path / PICKLE_SINGLE)] if (path / PICKLE_SINGLE).is_file() else [])
    )
    if pickle_files:
        if not allow_pickle:
            raise ValueError(
                f"{path} has only pickle weights ({pickle_files[0].name}); unpickling can run arbitrary "
                "code, so it is refused. Convert it to safetensors, or pass allow_pickle=True if you "
                "trust the source"
            )
        return Checkpoint(path, config, pickle_files, "pickle")
    raise ValueError(f"{path} holds no weights ({SAFE_SINGLE}, {SAFE_INDEX}, {PICKLE_SINGLE} or {PICKLE_INDEX})")


def read_json(f: Path, what: str):
    """Parse a JSON file; undecodable bytes, bad JSON or absurd nesting are a ValueError naming the file."""
    try:
        return json.loads(f.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{f}: {what} is not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{f}: {what} is not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{f}: {what} is nested too deeply to parse") from None


def read_config(path: Path) -> PretrainedConfig:
    """The config of checkpoint directory `path`, never running custom code (see the module docstring)."""
    f = path / "config.json"
    raw = read_json(f, "the config")
    if not isinstance(raw, dict):
        raise ValueError(f"{f}: the config must be a JSON object, got {type(raw).__name__}")
    if raw.get("auto_map"):
        raise ValueError(
            f"{f} has an auto_map entry (the model ships its own Python code); custom-code models are not supported"
        )
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"{f}: model_type {model_type!r} is not a model type this transformers knows; "
            "custom-code models are not supported"
        )
    arch = raw.get("architectures")
    if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
        raise ValueError(f"{f}: architectures must be a list of class names, got {str(arch)[:60]!r}")
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except RecursionError:
        raise ValueError(f"{f}: the config is nested too deeply to parse") from None
    except Exception as err:  # noqa: BLE001 - transformers' validators raise their own exception types
        raise ValueError(f"{f}: cannot read the config ({type(err).__name__}: {err})") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n, types = getattr(text, "num_hidden_layers", None), getattr(text, "layer_types", None)
    if isinstance(n, int) and isinstance(types, (list, tuple)) and len(types) != n:
        raise ValueError(f"{f}: num_hidden_layers is {n} but layer_types lists {len(types)} layers")
    return config


def confined(root: Path, name, where) -> Path:
    """root/name after resolving symlinks; ValueError (naming `where`) if it lies outside root.

    For a hub cache snapshot (root = .../snapshots/REV) the repository's blobs folder is allowed too.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{where}: file name {name!r} is not a valid file name")
    base = root.resolve()
    allowed = [base]
    if base.parent.name == "snapshots":
        allowed.append(base.parent.parent / "blobs")
    try:
        target = (root / name).resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop (RuntimeError before Python 3.13, OSError after)
        raise ValueError(f"{where}: {name!r} cannot be resolved ({err}); refused") from None
    if Path(name).is_absolute() or not any(target == a or a in target.parents for a in allowed):
        raise ValueError(f"{where}: {name!r} points outside the checkpoint directory {root} (to {target}); refused")
    return root / name


# A folder of files that transformers reads when it loads a tokenizer (named chat templates, *.jinja).
SIDE_FOLDERS = ("additional_chat_templates",)
# A folder with one of these suffixes stands where a config, template or vocabulary file is expected: refused.
SIDE_FILE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def side_files(path: Path) -> list[Path]:
    """The files of checkpoint directory `path` besides its weights: config, generation config, chat template,
    tokenizer and vocabulary files, and whatever else lies there. The one check that loading (`open_checkpoint`,
    `load_tokenizer`) and merging (which copies these files) make, from the directory entries alone: no file is
    opened, so a FIFO never blocks.

    - A symlink must resolve inside the directory (`confined`; for a hub cache snapshot the repository's
      ``blobs`` counts as inside): the error names the file and where it points. So must the entries of
      SIDE_FOLDERS.
    - An entry that is not a regular file once symlinks are followed (a FIFO, a device, a socket, a dangling
      symlink) is refused, naming it; a folder is skipped unless a file of that name is expected.

    Returns the regular files, sorted by name (what merge copies).
    """
    path = Path(path)
    files = []
    for f in sorted(path.iterdir()):
        if f.name.endswith(WEIGHT_SUFFIXES) or f.name in WEIGHT_INDEX_NAMES:
            continue  # weights: open_checkpoint checks the ones it reads
        if f.is_symlink():
            confined(path, f.name, f)
        try:
            mode = f.stat().st_mode
        except OSError as err:
            raise ValueError(f"{f}: cannot be read ({err.strerror or err}; a dangling symlink?); refused") from None
        if stat.S_ISREG(mode):
            files.append(f)
            continue
        if stat.S_ISDIR(mode) and (f.name.startswith(".") or f.suffix not in SIDE_FILE_SUFFIXES):
            for g in sorted(f.iterdir()) if f.name in SIDE_FOLDERS else ():
                confined(path, f"{f.name}/{g.name}", g)
            continue  # a folder such as original/ or .cache/: neither read nor copied
        kind = next((what for test, what in _NOT_REGULAR if test(mode)), "not a file")
        raise ValueError(f"{f} is not a regular file ({kind}); refused without opening it")
    return files


def _index_files(path: Path, index_name: str) -> list[Path]:
    f = path / index_name
    index = read_json(f, "the weight index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(
            f"{f}: not a valid weight index ('weight_map' must be an object mapping tensor names "
            f"to shard files, got {type(weight_map).__name__})"
        )
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{f}: not a valid weight index (every shard name in 'weight_map' must be a string)")
    files = [confined(path, name, f) for name in sorted(set(weight_map.values()))]
    for shard in files:
        if not shard.is_file():
            raise ValueError(f"{f} lists shard {shard.name}, which is missing")
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
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
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
