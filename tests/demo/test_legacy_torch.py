"""The torch-free legacy .pth reader: exact round trip of strided tensors, refusal of what a state_dict never holds."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from quantdoctor.demo.legacy_torch import MAGIC_NUMBER, PROTOCOL_VERSION, load_legacy_state_dict
from quantdoctor.errors import ModelLoadError

SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


class _Storage:
    """What the writer pickles as a persistent id."""

    def __init__(self, key: str, type_name: str, data: np.ndarray) -> None:
        self.key, self.type_name, self.data = key, type_name, data


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in `torch` modules so the stdlib pickler can name torch globals the way torch.save does."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def write_legacy(
    path: Path, state: dict, storages: list[_Storage], torch: types.ModuleType, header: object = MAGIC_NUMBER
) -> None:
    """A minimal `torch.save(..., _use_new_zipfile_serialization=False)`."""
    with open(path, "wb") as f:
        for obj in (header, PROTOCOL_VERSION, SYS_INFO):
            pickle.dump(obj, f, protocol=2)
        pickler = pickle.Pickler(f, protocol=2)

        def persistent_id(obj):
            if isinstance(obj, _Storage):
                return ("storage", getattr(torch, obj.type_name), obj.key, "cpu", obj.data.size, None)
            return None

        pickler.persistent_id = persistent_id
        pickler.dump(state)
        keys = sorted(s.key for s in storages)
        pickle.dump(keys, f, protocol=2)
        by_key = {s.key: s for s in storages}
        for key in keys:
            data = by_key[key].data
            f.write(struct.pack("<q", data.size))
            f.write(data.astype(data.dtype.newbyteorder("<")).tobytes())


@pytest.fixture
def tiny_file(tmp_path, fake_torch) -> Path:
    floats = _Storage("140", "FloatStorage", np.arange(24, dtype=np.float32) * 0.5 - 3.0)
    longs = _Storage("7", "LongStorage", np.array([42, -5], dtype=np.int64))
    state = collections.OrderedDict(
        strided=_Tensor(floats, 2, (3, 4), (1, 5)),  # transposed, offset view: not contiguous
        flat=_Tensor(floats, 0, (2, 3, 4), (12, 4, 1)),  # same storage, shared
        scalar=_Tensor(longs, 1, (), ()),
        broadcast=_Tensor(longs, 0, (3,), (0,)),  # expand()-style stride 0
    )
    path = tmp_path / "tiny.pth"
    write_legacy(path, state, [floats, longs], fake_torch)
    return path


def test_round_trip_of_strided_tensors_is_exact(tiny_file):
    sd = load_legacy_state_dict(tiny_file)
    storage = np.arange(24, dtype=np.float32) * 0.5 - 3.0
    expected_strided = np.array([[storage[2 + i + 5 * j] for j in range(4)] for i in range(3)], dtype=np.float32)
    assert list(sd) == ["strided", "flat", "scalar", "broadcast"]
    np.testing.assert_array_equal(sd["strided"], expected_strided)
    assert sd["strided"].flags.c_contiguous and sd["strided"].dtype == np.float32
    np.testing.assert_array_equal(sd["flat"], storage.reshape(2, 3, 4))
    assert sd["scalar"].shape == () and sd["scalar"].dtype == np.int64 and sd["scalar"] == -5
    np.testing.assert_array_equal(sd["broadcast"], [42, 42, 42])
    # Results own their memory: writing to one tensor must not change another cut from the same storage.
    sd["flat"][0, 0, 2] = 99.0
    assert sd["strided"][0, 0] == storage[2]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["payload", "header"])
def test_pickle_calling_os_system_is_refused_before_running(tmp_path, fake_torch, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if where == "header":
        write_legacy(path, {}, [], fake_torch, header=_Exploit(marker))
    else:
        write_legacy(path, {"weight": _Exploit(marker)}, [], fake_torch)
    with pytest.raises(ModelLoadError, match=r"refusing .*system"):
        load_legacy_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [10, 200, -30, -4])
def test_truncated_file_is_a_model_load_error(tiny_file, tmp_path, keep):
    raw = tiny_file.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(raw[:keep])
    with pytest.raises(ModelLoadError, match="truncated|not a legacy"):
        load_legacy_state_dict(cut)


def test_wrong_magic_and_zip_format_and_missing_file(tmp_path, fake_torch):
    wrong = tmp_path / "wrong.pth"
    write_legacy(wrong, {}, [], fake_torch, header=12345)
    with pytest.raises(ModelLoadError, match="wrong magic number"):
        load_legacy_state_dict(wrong)
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(ModelLoadError, match="zip-format"):
        load_legacy_state_dict(zipped)
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_legacy_state_dict(tmp_path / "absent.pth")


def test_tensor_reaching_past_its_storage_is_refused(tmp_path, fake_torch):
    storage = _Storage("1", "FloatStorage", np.zeros(6, dtype=np.float32))
    path = tmp_path / "oob.pth"
    # 2x4 with stride (4, 1) from offset 0 needs 8 elements; the storage has 6. as_strided would read foreign memory.
    write_legacy(path, {"w": _Tensor(storage, 0, (2, 4), (4, 1))}, [storage], fake_torch)
    with pytest.raises(ModelLoadError, match="reaches element 7 of a 6-element storage"):
        load_legacy_state_dict(path)
