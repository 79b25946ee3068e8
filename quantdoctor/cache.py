"""Converted models cached by content hash, so a re-run (after a crash, a Ctrl-C, or with other report options) resumes
instead of converting again.

An entry is keyed by the sha256 of a canonical JSON description of everything that decides the output bytes: a digest
of the model (file or folder contents; for a Keras model in memory its config JSON, weights and the source of any custom
layer class), the scheme and its settings, every option (denylists, overrides, calibration method), a digest of the
calibration samples as they are fed to the quantizer, the versions of the packages that convert, and a digest of
quantdoctor's own conversion code. A change to any of them is a new key: the cache never serves a stale entry, and what
cannot be described exactly (a model without a config, an option that is not plain data) is simply not cached.

Entries live in `conversions/` under `$QUANTDOCTOR_CACHE_DIR`, else `$XDG_CACHE_HOME/quantdoctor`, else
`~/.cache/quantdoctor`. Each is one file written atomically (temp file + `os.replace`) with a header carrying the
payload's length and sha256, so a truncated or damaged entry is detected, removed and treated as a miss; a JSON sidecar
says what it is, when it was made and from which key parts. The oldest entries (least recently used) are evicted past a
size cap (2 GB; `$QUANTDOCTOR_CACHE_MAX_MB`). `QUANTDOCTOR_CACHE=0`, `use_cache(False)`, `cache=False` in the configs
and `--no-cache` turn it off. The cache never fails a run: an unwritable folder only logs at debug level.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIR_ENV, SWITCH_ENV, MAX_ENV = "QUANTDOCTOR_CACHE_DIR", "QUANTDOCTOR_CACHE", "QUANTDOCTOR_CACHE_MAX_MB"
DEFAULT_MAX_BYTES = 2 * 1024**3
_OFF = {"0", "false", "no", "off"}
_SWITCH_VALUES = _OFF | {"1", "true", "yes", "on"}
_MAGIC = b"QDCACHE1"
_HEADER = struct.Struct(">8sQ32s")  # magic, payload length, payload sha256
_CHUNK = 1 << 20
# quantdoctor modules whose code decides what a conversion produces (hashed into every key).
_CODE = ("quantize/converter.py", "quantize/schemes.py", "quantize/recipes.py", "quantize/onnxrt.py",
         "backends/tf1.py", "backends/keras/loader.py", "backends/torch/export.py", "cache.py")

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("quantdoctor_cache_enabled", default=True)


class Uncacheable(Exception):
    """A key part cannot be described exactly; the conversion runs without the cache."""


@contextlib.contextmanager
def use_cache(enabled: bool = True) -> Iterator[None]:
    """Within the block the cache is used only if `enabled` and every enclosing block allows it (False wins)."""
    token = _enabled.set(_enabled.get() and bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def cache_enabled() -> bool:
    """True unless `QUANTDOCTOR_CACHE=0` or an enclosing `use_cache(False)` turned the cache off."""
    return _enabled.get() and os.environ.get(SWITCH_ENV, "").strip().lower() not in _OFF


def cache_root() -> Path:
    """`$QUANTDOCTOR_CACHE_DIR`; else `$QUANTDOCTOR_CACHE` when it is a path (the demo's older variable); else
    `$XDG_CACHE_HOME/quantdoctor`; else `~/.cache/quantdoctor`. Not created here."""
    explicit = os.environ.get(DIR_ENV)
    legacy = os.environ.get(SWITCH_ENV, "")
    if explicit:
        return Path(explicit).expanduser()
    if legacy and legacy.strip().lower() not in _SWITCH_VALUES:
        return Path(legacy).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "quantdoctor"


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `parts` (sorted keys, no spaces).

    Raises:
        Uncacheable: a part is not plain JSON data.
    """
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise Uncacheable(f"key part is not plain data: {exc}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Cache:
    """Bytes by key in a folder; every method is safe against other processes using the same folder.

    Args:
        root: the cache root; entries go to `root/conversions/<2 hex>/<key>.bin` with a `<key>.json` sidecar.
        max_bytes: size cap of the entries; past it the least recently used ones are removed.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = Path(root) / "conversions"
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = 0

    @classmethod
    def default(cls) -> Cache | None:
        """The user's cache, or None when it is turned off."""
        if not cache_enabled():
            return None
        try:
            max_bytes = int(float(os.environ.get(MAX_ENV, "")) * 1024**2)
        except ValueError:
            max_bytes = DEFAULT_MAX_BYTES
        return cls(cache_root(), max_bytes)

    def _paths(self, key: str) -> tuple[Path, Path]:
        base = self.folder / key[:2] / key
        return base.with_suffix(".bin"), base.with_suffix(".json")

    def get(self, key: str) -> bytes | None:
        """The payload stored under `key`, or None (missing, truncated or damaged entries are removed)."""
        entry, sidecar = self._paths(key)
        try:
            raw = entry.read_bytes()
        except OSError:
            self.misses += 1
            return None
        payload = _unpack(raw)
        if payload is None:
            log.debug("cache entry %s is damaged; removed", entry)
            for p in (entry, sidecar):
                with contextlib.suppress(OSError):
                    p.unlink()
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)  # eviction removes the least recently used
        self.hits += 1
        return payload

    def put(self, key: str, data: bytes, what: str = "", parts: dict[str, Any] | None = None) -> bool:
        """Store `data` under `key` (atomically) with a sidecar; False if the folder cannot be written."""
        entry, sidecar = self._paths(key)
        data = bytes(data)
        header = _HEADER.pack(_MAGIC, len(data), hashlib.sha256(data).digest())
        info = {"what": what, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bytes": len(data), "key": key,
                "parts": parts or {}}
        try:
            _atomic_write(entry, header + data)
            _atomic_write(sidecar, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        except OSError as exc:
            log.debug("cannot write the cache entry %s: %s", entry, exc)
            return False
        self.evict()
        return True

    def memo(self, what: str, parts: dict[str, Any], produce: Callable[[], bytes]) -> bytes:
        """The cached bytes for `parts`, or `produce()` stored under them."""
        key = cache_key(parts)
        found = self.get(key)
        if found is not None:
            log.debug("cache hit: %s (%s)", what, key[:12])
            return found
        data = bytes(produce())
        self.put(key, data, what, parts)
        return data

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every entry file."""
        out = []
        for entry in self.folder.glob("*/*.bin"):
            with contextlib.suppress(OSError):
                st = entry.stat()
                out.append((st.st_mtime, st.st_size, entry))
        return out

    def evict(self) -> int:
        """Remove the least recently used entries until the rest fit `max_bytes`, and stale temp files; how many went."""
        now, removed = time.time(), 0
        for tmp in self.folder.glob("*/.*.tmp"):  # left by a process killed mid-write
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > 3600:
                    tmp.unlink()
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        for _, size, entry in entries:
            if total <= self.max_bytes:
                break
            for p in (entry, entry.with_suffix(".json")):
                with contextlib.suppress(OSError):
                    p.unlink()
            total -= size
            removed += 1
        return removed


def cached(what: str, parts: Callable[[], dict[str, Any]], produce: Callable[[], bytes]) -> bytes:
    """`produce()` through the user's cache: the one call the converters make.

    Args:
        what: a few words for the sidecar ("tflite int8", "onnx ort-qdq-int8").
        parts: returns the key parts (called only when the cache is on); raising `Uncacheable` skips the cache.
        produce: makes the bytes on a miss; its exceptions propagate and nothing is stored.
    """
    cache = Cache.default()
    if cache is None:
        return produce()
    from quantdoctor.errors import QuantDoctorError

    try:
        described = parts()
        cache_key(described)
    except QuantDoctorError:
        raise  # e.g. unreadable calibration data: the conversion would fail the same way
    except Exception as exc:  # Uncacheable, or data the digest cannot read: the conversion gives the real error
        log.debug("not cached (%s): %s", what, exc)
        return produce()
    return cache.memo(what, described, produce)


def cache_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run `func` under `use_cache(cache)`, `cache` being its keyword argument (default True): an API function's
    `cache=False` then reaches every conversion it makes, however deep."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, cache: bool = True, **kwargs: Any) -> Any:
        with use_cache(cache):
            return func(*args, cache=cache, **kwargs)

    return wrapper


# -- key parts ---------------------------------------------------------------------------------------------------------
def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def digest_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, or of a folder's relative file names and bytes (sorted; a SavedModel)."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if f != path:
                h.update(f"\0{f.relative_to(path).as_posix()}\0".encode())
            with f.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    h.update(chunk)
    except OSError as exc:
        raise Uncacheable(f"cannot read {path}: {exc}") from None
    return h.hexdigest()


def digest_arrays(arrays: Iterator[Any], dtype: str | None = "float32") -> str:
    """sha256 over arrays (shape, dtype and bytes of each, in order), converted to `dtype` as a quantizer reads them."""
    import numpy as np

    h = hashlib.sha256()
    count = 0
    for a in arrays:
        a = np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype=dtype))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        count += 1
    return f"{h.hexdigest()}:{count}"


def digest_calibration(calibration: Callable[[], Any] | None) -> str | None:
    """Digest of every calibration batch as the converters read it (float32; a list/tuple batch feeds several inputs).

    Reads the data once more than the conversion does; calibration sets are a few hundred samples.
    """
    if calibration is None:
        return None

    def arrays():
        for batch in calibration():
            yield from (batch if isinstance(batch, (list, tuple)) else [batch])

    return digest_arrays(arrays())


def digest_keras_model(model: Any) -> str:
    """Digest of a Keras model in memory: its config JSON, every weight, and the source of non-Keras classes in it.

    Raises:
        Uncacheable: the model has no serializable config (a subclassed model) or a custom class without source.
    """
    import numpy as np

    h = hashlib.sha256()
    try:
        h.update(model.to_json().encode("utf-8"))
    except Exception as exc:  # NotImplementedError for subclassed models, TypeError for odd configs
        raise Uncacheable(f"the Keras model has no config: {type(exc).__name__}") from None
    classes = {type(model), *(type(layer) for layer in _all_layers(model))}
    for cls in sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        h.update(_class_code(cls))  # a custom layer's call() is not in the config: its code is part of the model
    h.update(digest_arrays((np.asarray(w) for w in model.weights), dtype=None).encode())
    return h.hexdigest()


_SIMPLE = (int, float, str, bytes, bool, type(None))
_LIBRARIES = ("keras", "tf_keras", "tensorflow", "builtins")


def _class_code(cls: type) -> bytes:
    """The bytecode, constants, closures and simple globals of every method a class (and its non-library bases)
    defines; source text is not used: `inspect.getsource` finds the wrong class when two share a qualified name.

    Raises:
        Uncacheable: a closure holds something other than plain values.
    """
    out = []
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in _LIBRARIES:
            continue
        out.append(f"{klass.__module__}.{klass.__qualname__}".encode())
        for name, value in sorted(vars(klass).items()):
            func = getattr(value, "__func__", getattr(value, "fget", value))  # classmethod, staticmethod, property
            code = getattr(func, "__code__", None)
            if code is not None:
                out.append(name.encode() + _code_bytes(code, func))
            elif isinstance(value, _SIMPLE):
                out.append(f"{name}={value!r}".encode())
    return b"\0".join(out)


def _code_bytes(code: Any, func: Any = None) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(_code_bytes(const) if hasattr(const, "co_code") else repr(const).encode())
    if func is not None:
        for cell in getattr(func, "__closure__", None) or ():
            value = cell.cell_contents
            if not isinstance(value, _SIMPLE):
                raise Uncacheable(f"a closure of {func.__qualname__} holds a {type(value).__name__}")
            parts.append(repr(value).encode())
        scope = getattr(func, "__globals__", {})
        parts += [f"{n}={scope[n]!r}".encode() for n in code.co_names if isinstance(scope.get(n), _SIMPLE)]
    return b"\1".join(parts)


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", ()):
        yield layer
        if hasattr(layer, "layers") and layer is not model:
            yield from _all_layers(layer)


def digest_source(source: Any) -> dict[str, Any]:
    """Key parts of a float model: a `ModelSource` (kind, graph options, contents) or a Keras model in memory."""
    kind = getattr(source, "kind", None)
    if kind is not None and hasattr(source, "path"):
        return {"kind": kind, "options": source.options(), "sha256": digest_path(source.path)}
    return {"kind": "keras-in-memory", "sha256": digest_keras_model(source)}


@lru_cache(maxsize=None)
def versions(*packages: str) -> dict[str, str]:
    """Installed versions of `packages` (read from their metadata, no import), and quantdoctor's code digest."""
    from importlib import metadata

    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    from quantdoctor import __version__

    found["quantdoctor"] = __version__
    found["quantdoctor-code"] = _code_digest()
    return found


@lru_cache(maxsize=1)
def _code_digest() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for rel in _CODE:
        with contextlib.suppress(OSError):
            h.update(rel.encode() + (here / rel).read_bytes())
    return h.hexdigest()[:16]


TF_PACKAGES = ("tensorflow", "tensorflow-cpu", "tf-nightly", "keras", "ai-edge-quantizer", "ai-edge-litert")
ORT_PACKAGES = ("onnxruntime", "onnx")
TORCH_PACKAGES = ("torch", "onnx", "onnxscript")


def _unpack(raw: bytes) -> bytes | None:
    if len(raw) < _HEADER.size:
        return None
    magic, length, digest = _HEADER.unpack_from(raw)
    payload = raw[_HEADER.size:]
    if magic != _MAGIC or length != len(payload) or hashlib.sha256(payload).digest() != digest:
        return None
    return payload


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, then `os.replace`: readers see no entry or the whole one (cf. `files.py`, which
    also fsyncs and makes outputs world-readable; a cache entry needs neither)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
