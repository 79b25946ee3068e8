import json
import os

import pytest

from quantdoctor.errors import UserInputError
from quantdoctor.report.write import write_outputs


def test_writes_both_files_into_a_new_folder(diagnosis, tmp_path):
    out = tmp_path / "a" / "b"
    paths = write_outputs(diagnosis, out)
    assert paths == {"json": out / "report.json", "html": out / "report.html"}
    assert json.loads(paths["json"].read_text())["onset"]["label"] == "b1_dw_relu"
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temp file left behind
    assert paths["json"].stat().st_mode & 0o777 == 0o644


def test_replaces_an_existing_report(diagnosis, healthy_diagnosis, tmp_path):
    write_outputs(diagnosis, tmp_path)
    write_outputs(healthy_diagnosis, str(tmp_path))
    assert json.loads((tmp_path / "report.json").read_text())["onset"] is None


def test_refuses_a_file_as_folder(diagnosis, tmp_path):
    target = tmp_path / "report"
    target.write_text("keep me")
    with pytest.raises(UserInputError, match="is an existing file") as info:
        write_outputs(diagnosis, target)
    assert "\n" not in str(info.value)
    assert target.read_text() == "keep me"


def test_a_failed_render_leaves_the_old_report_intact(diagnosis, tmp_path, monkeypatch):
    write_outputs(diagnosis, tmp_path)
    before = (tmp_path / "report.json").read_text()

    def boom(self):
        raise RuntimeError("render failed")

    monkeypatch.setattr(type(diagnosis), "to_html", boom)
    with pytest.raises(RuntimeError):
        write_outputs(diagnosis, tmp_path)
    assert (tmp_path / "report.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["report.html", "report.json"]


def test_a_failed_write_removes_its_temp_file(diagnosis, tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_outputs(diagnosis, tmp_path)
    assert os.listdir(tmp_path) == []
