"""The cache folder's precedence and the atomic file write other modules reuse."""

from __future__ import annotations

import os

import pytest

from quantdoctor import files
from quantdoctor.demo import cache


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QUANTDOCTOR_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "quantdoctor"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "quantdoctor"
    monkeypatch.setenv("QUANTDOCTOR_CACHE", str(tmp_path / "mine" / "deep"))
    assert cache.cache_dir() == tmp_path / "mine" / "deep"
    monkeypatch.setenv("QUANTDOCTOR_CACHE", "0")  # the conversion cache's off switch, not a folder named 0
    assert cache.cache_dir() == tmp_path / "xdg" / "quantdoctor"
    assert (tmp_path / "mine" / "deep").is_dir()  # created on demand


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    assert files.atomic_write_bytes(target, b"first") == target
    files.atomic_write_bytes(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert os.listdir(target.parent) == ["out.bin"]


def test_failed_atomic_write_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
