"""The demo photos: 100 unlabelled ai-benchmark photos then 20 labelled foolbox ImageNet images, in numeric order."""

from __future__ import annotations

import pytest

from quantdoctor.demo import photos
from quantdoctor.errors import UserInputError


def test_demo_images():
    images = photos.demo_images()
    assert len(images.paths) == len(images.labels) == 120
    assert all(p.is_file() for p in images.paths)
    assert [p.name for p in images.paths[:12]] == [f"{i}.jpg" for i in range(12)]  # numeric, not 0, 1, 10, 11
    assert images.labels[:100] == (-1,) * 100
    assert sum(label != -1 for label in images.labels) == 20
    assert images.paths[100].name == "imagenet_00_243.jpg" and images.labels[100] == 243
    assert images.paths[119].name == "imagenet_19_305.jpg" and images.labels[119] == 305
    assert "ai-benchmark" in images.source and "foolbox" in images.source


def test_labelled_subset():
    labelled = photos.demo_images().labelled()
    assert len(labelled.paths) == 20 and -1 not in labelled.labels
    assert labelled.labels[:3] == (243, 559, 438)


def test_image_list_is_frozen_and_consistent(tmp_path):
    images = photos.ImageList((tmp_path / "a.jpg",), (3,), "test")
    with pytest.raises(AttributeError):
        images.source = "other"
    with pytest.raises(ValueError, match="1 paths but 2 labels"):
        photos.ImageList((tmp_path / "a.jpg",), (3, 4), "test")


@pytest.mark.parametrize("missing, command", [("ai_benchmark", "ai-benchmark==0.1.2"), ("foolbox", "foolbox==3.3.4")])
def test_missing_package_names_the_pip_command(monkeypatch, missing, command):
    real_find_spec = photos.importlib.util.find_spec
    monkeypatch.setattr(
        photos.importlib.util, "find_spec", lambda name: None if name == missing else real_find_spec(name)
    )
    with pytest.raises(UserInputError, match=f"pip install --no-deps {command}"):
        photos.demo_images()
