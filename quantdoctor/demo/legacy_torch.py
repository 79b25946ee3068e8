"""Read a legacy (pre-zip) PyTorch state_dict into numpy arrays without torch, and without running its pickle's code.

The legacy format written by `torch.save(..., _use_new_zipfile_serialization=False)` is a byte stream of:

1. three pickles: the magic number, the protocol version, a sys-info dict (endianness, type sizes);
2. the pickled object; each tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` whose
   storage is a persistent id `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`;
3. the pickled list of storage keys, then for each key an int64 element count and the raw little-endian elements.

A pickle can name any importable callable, so `find_class` accepts only the few globals a state_dict needs and
everything else is refused before it is called.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.errors import ModelLoadError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage class -> numpy dtype of its raw little-endian elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` and friends inside the pickle."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by the pickle; its bytes come after the pickle, so tensors only keep this reference."""

    key: str
    dtype: np.dtype
    numel: int
    offset: int = 0  # element offset when the pickle names a view of a bigger storage


@dataclass(frozen=True)
class _TensorRef:
    """A tensor waiting for its storage's bytes."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> _TensorRef:
    # requires_grad, backward_hooks and metadata do not matter for inference weights.
    if not isinstance(storage, _StorageRef):
        raise ModelLoadError("malformed PyTorch file: a tensor does not refer to a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    # nn.Parameter wraps a tensor; the wrapper carries nothing we need.
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_ALLOWED_GLOBALS` and turns storages into `_StorageRef`s."""

    def __init__(self, stream: io.BytesIO, storages: dict[str, _StorageRef]) -> None:
        super().__init__(stream)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ModelLoadError(
                f"refusing to load PyTorch file: its pickle references {module}.{name}, which a plain state_dict never "
                "does (the file may be malicious or not a state_dict)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise ModelLoadError(f"malformed PyTorch file: unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise ModelLoadError(f"malformed PyTorch file: {storage_type!r:.80} is not a storage type")
        key = str(key)
        ref = self._storages.setdefault(key, _StorageRef(key, storage_type.dtype, int(numel)))
        if view_metadata is None:
            return ref
        # Very old files name a slice (view) of a shared storage: (view_key, element offset, element count).
        _view_key, offset, view_size = view_metadata
        return _StorageRef(key, ref.dtype, int(view_size), ref.offset + int(offset))


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy PyTorch state_dict as `{name: array}`, keeping each tensor's dtype and shape.

    Raises:
        ModelLoadError: the file is missing, not a legacy PyTorch file, truncated, references code a state_dict never
            needs, or holds something other than a flat `{name: tensor}` dict.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read PyTorch weights {path}: {exc.strerror or exc}") from exc
    if raw[:4] == b"PK\x03\x04":
        raise ModelLoadError(
            f"{path} is a zip-format PyTorch file (torch >= 1.6); only the legacy format is supported - "
            "re-save it with torch.save(state_dict, f, _use_new_zipfile_serialization=False)"
        )
    stream = io.BytesIO(raw)
    storages: dict[str, _StorageRef] = {}
    try:
        _check_headers(stream, storages, path)
        obj = _RestrictedUnpickler(stream, storages).load()
        keys = _RestrictedUnpickler(stream, storages).load()
        data = _read_storages(stream, raw, keys, storages)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes means the same thing to the user
        raise ModelLoadError(f"{path} is truncated or not a PyTorch state_dict ({type(exc).__name__}: {exc})") from exc
    return _resolve(obj, data, path)


def _check_headers(stream: io.BytesIO, storages: dict[str, _StorageRef], path: Path) -> None:
    """Read and check the magic number, protocol version and sys info."""
    try:
        magic = _RestrictedUnpickler(stream, storages).load()
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as exc:
        raise ModelLoadError(f"{path} is not a legacy PyTorch file (no magic number at the start)") from exc
    if magic != MAGIC_NUMBER:
        raise ModelLoadError(f"{path} is not a legacy PyTorch file (wrong magic number)")
    version = _RestrictedUnpickler(stream, storages).load()
    if version != PROTOCOL_VERSION:
        raise ModelLoadError(f"{path} uses PyTorch file protocol {version!r:.40}; only {PROTOCOL_VERSION} is supported")
    sys_info = _RestrictedUnpickler(stream, storages).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise ModelLoadError(f"{path} was saved on a big-endian machine, which is not supported")


def _read_storages(
    stream: io.BytesIO, raw: bytes, keys: Any, storages: dict[str, _StorageRef]
) -> dict[str, np.ndarray]:
    """Read each storage's element count and bytes, in the order of the pickled key list."""
    if not isinstance(keys, list):
        raise ModelLoadError("malformed PyTorch file: the storage key list is missing")
    data: dict[str, np.ndarray] = {}
    for key in keys:
        key = str(key)
        if key not in storages:
            raise ModelLoadError(f"malformed PyTorch file: storage {key!r:.40} is not used by any tensor")
        ref = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise ModelLoadError(f"PyTorch file is truncated: storage {key!r:.40} has no element count")
        (count,) = struct.unpack("<q", header)
        start = stream.tell()
        nbytes = count * ref.dtype.itemsize
        # Check against what is left before slicing: a corrupt count must not become a huge allocation.
        if count < 0 or start + nbytes > len(raw):
            raise ModelLoadError(f"PyTorch file is truncated: storage {key!r:.40} needs {nbytes} bytes")
        data[key] = np.frombuffer(raw, dtype=ref.dtype, count=count, offset=start)
        stream.seek(start + nbytes)
    return data


def _resolve(obj: Any, data: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Turn the unpickled `{name: _TensorRef}` into `{name: array}`."""
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state_dict ({{name: tensor}})")
    result: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ModelLoadError(
                f"{path} is not a flat state_dict: entry {name!r:.60} is a {type(value).__name__}, not a tensor"
            )
        if value.storage.key not in data:
            raise ModelLoadError(f"PyTorch file is truncated: tensor {name!r:.60} has no stored data")
        result[str(name)] = _materialize(value, data[value.storage.key], str(name))
    return result


def _materialize(ref: _TensorRef, storage: np.ndarray, name: str) -> np.ndarray:
    """Copy one tensor out of its storage, honouring offset, size and stride."""
    size, stride = ref.size, ref.stride
    offset = ref.storage.offset + ref.offset
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise ModelLoadError(f"malformed PyTorch file: tensor {name!r:.60} has size {size} and stride {stride}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    # as_strided does no bounds check, so make sure the last element addressed is inside the storage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ModelLoadError(
            f"malformed PyTorch file: tensor {name!r:.60} reaches element {last} of a {storage.size}-element storage"
        )
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    # Native byte order so downstream code (Keras, TFLite) never sees '>' or explicit '<' dtypes.
    # (np.ascontiguousarray would turn a 0-d tensor into shape (1,).)
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C", copy=True)
