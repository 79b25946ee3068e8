"""Dataset: streamed batches, subsets, label checks, calibration splits and load_dataset errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantdoctor.data import PRESETS, Dataset, DataSplit, load_dataset, split_calibration
from quantdoctor.errors import DataError, UnknownNameError, UserInputError


@pytest.fixture()
def npz(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, -1, 4, 0, 1, 2, 3, 4])
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


def test_streamed_batches_equal_all_at_once(npz) -> None:
    path, x, _ = npz
    dataset = load_dataset(path, (4, 4, 3), preprocess="resnet50")
    batches = list(dataset.batches(3))
    assert [len(b) for b, _ in batches] == [3, 3, 3, 1]
    streamed = np.concatenate([b for b, _ in batches])
    assert streamed.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([i for _, i in batches]), np.arange(10))
    np.testing.assert_allclose(streamed, PRESETS.get("resnet50")(x.astype(np.float32)), rtol=0, atol=1e-5)


def test_batches_follow_the_given_indices(npz) -> None:
    path, x, _ = npz
    dataset = load_dataset(path, (4, 4, 3), preprocess="scale01")
    (batch, positions), = list(dataset.batches(8, indices=np.array([9, 2, 5])))
    assert positions.tolist() == [9, 2, 5]
    np.testing.assert_allclose(batch, x[[9, 2, 5]] / 255.0, rtol=1e-6)


def test_subset_keeps_labels_and_original_sample_numbers(npz) -> None:
    path, x, y = npz
    dataset = load_dataset(path, (4, 4, 3))
    part = dataset.subset([8, 3, 4])
    assert len(part) == 3
    assert part.labels.tolist() == [3, -1, 4]
    assert part.source_indices.tolist() == [8, 3, 4]
    assert part.description == "d.npz (10 samples, labelled), 3 of 10 samples"
    np.testing.assert_array_equal(np.concatenate([b for b, _ in part.batches(2)]), x[[8, 3, 4]])
    assert part.subset([2]).source_indices.tolist() == [4]


def test_non_finite_samples_are_named_by_their_place_in_the_file(tmp_path: Path) -> None:
    x = np.zeros((20, 3), dtype=np.float32)
    x[17, 1] = np.nan
    np.save(tmp_path / "n.npy", x)
    dataset = load_dataset(tmp_path / "n.npy", (3,))
    message = r"data sample 17 contains NaN or Inf; clean the data or pick another --preprocess"
    with pytest.raises(DataError, match=message):
        list(dataset.batches(8))
    with pytest.raises(DataError, match=r"data sample 17 contains NaN or Inf"):
        list(dataset.subset([2, 17]).batches(8))
    assert sum(len(b) for b, _ in dataset.subset(np.arange(17)).batches(8)) == 17


def test_inf_after_preprocessing_is_caught(tmp_path: Path) -> None:
    x = np.zeros((2, 3), dtype=np.float64)
    x[1, 0] = 1e300  # finite in float64, Inf once read as float32
    np.save(tmp_path / "big.npy", x)
    with pytest.raises(DataError, match=r"data sample 1 contains NaN or Inf"):
        list(load_dataset(tmp_path / "big.npy", (3,)).batches(4))


def test_check_labels(npz) -> None:
    path, _, _ = npz
    dataset = load_dataset(path, (4, 4, 3))
    dataset.check_labels(5)  # -1 is "no label", 4 is the last class
    with pytest.raises(DataError, match=r"label 4 of data sample 4 is outside the model's 4 classes \(0\.\.3\)"):
        dataset.check_labels(4)
    np.savez(path.parent / "neg.npz", x=np.zeros((2, 3)), y=np.array([0, -2]))
    with pytest.raises(DataError, match=r"label -2 of data sample 1 is outside the model's 10 classes"):
        load_dataset(path.parent / "neg.npz", (3,)).check_labels(10)
    np.save(path.parent / "nolabels.npy", np.zeros((2, 3)))
    load_dataset(path.parent / "nolabels.npy", (3,)).check_labels(1)  # nothing to check


def test_float_labels_must_be_whole(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 3)), y=np.array([1.0, 0.25]))
    with pytest.raises(DataError, match=r"label 0.25 of sample 1 is not a whole number"):
        load_dataset(tmp_path / "f.npz", (3,))


def test_split_calibration() -> None:
    calib, evaluation = split_calibration(50, 20, seed=3)
    assert len(calib) == 20 and len(evaluation) == 30
    assert not set(calib) & set(evaluation)
    assert sorted({*calib, *evaluation}) == list(range(50))
    assert calib.tolist() == sorted(calib.tolist()) and evaluation.tolist() == sorted(evaluation.tolist())
    again, _ = split_calibration(50, 20, seed=3)
    np.testing.assert_array_equal(calib, again)
    other, _ = split_calibration(50, 20, seed=4)
    assert calib.tolist() != other.tolist()
    assert calib.tolist() != list(range(20))  # a random draw, not the first samples


def test_split_calibration_leaves_one_sample_to_evaluate() -> None:
    calib, evaluation = split_calibration(5, 100)
    assert len(calib) == 4 and len(evaluation) == 1
    calib, evaluation = split_calibration(1, 10)
    assert calib.tolist() == [] and evaluation.tolist() == [0]
    with pytest.raises(UserInputError, match=r"calibration sample count must be at least 0, got -1"):
        split_calibration(5, -1)


def test_data_split_is_frozen_and_round_trips() -> None:
    split = DataSplit(calib_source="--data (random 3)", calib_indices=(1, 4, 7), eval_count=7)
    with pytest.raises(FrozenInstanceError):
        split.eval_count = 3  # type: ignore[misc]
    assert DataSplit.from_dict(json.loads(json.dumps(split.to_dict()))) == split
    separate = DataSplit(calib_source="--calib calib.npz", calib_indices=None, eval_count=10)
    assert DataSplit.from_dict(separate.to_dict()) == separate


def test_unknown_names_fail_before_reading(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown preprocess preset 'imagenet'"):
        load_dataset(tmp_path / "does-not-matter.npz", (3,), preprocess="imagenet")
    with pytest.raises(UnknownNameError, match=r"unknown resize mode 'fit'"):
        load_dataset(tmp_path / "does-not-matter.npz", (3,), resize="fit")


def test_rgb_preset_on_a_one_channel_model_fails_at_load(tmp_path: Path) -> None:
    np.save(tmp_path / "g.npy", np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"preset 'densenet' needs RGB images"):
        load_dataset(tmp_path / "g.npy", (4, 4, 1), preprocess="densenet")


def test_batch_size_must_be_positive(npz) -> None:
    with pytest.raises(UserInputError, match=r"batch size must be at least 1, got 0"):
        next(load_dataset(npz[0], (4, 4, 3)).batches(0))


def test_from_images_preprocesses_each_batch(tmp_path: Path) -> None:
    paths = []
    for i, value in enumerate([0, 255, 51]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((9, 12, 3), value, dtype=np.uint8)).save(paths[-1])
    dataset = Dataset.from_images(paths, [1, -1, 0], (8, 8, 3), preprocess="scale01", description="demo photos")
    assert dataset.description == "demo photos" and dataset.preprocess == "scale01"
    assert dataset.labels.tolist() == [1, -1, 0]
    (batch, positions), = list(dataset.batches(4))
    assert batch.shape == (3, 8, 8, 3) and positions.tolist() == [0, 1, 2]
    np.testing.assert_allclose(batch.reshape(3, -1).mean(axis=1), [0.0, 1.0, 0.2], atol=1e-6)


def test_user_files_are_never_modified(tmp_path: Path, npz) -> None:
    path, _, _ = npz
    np.save(tmp_path / "m.npy", np.random.default_rng(1).integers(0, 255, (6, 4, 4, 3)).astype(np.uint8))
    Image.fromarray(np.full((5, 5, 3), 9, dtype=np.uint8)).save(tmp_path / "img.png")
    files = [path, tmp_path / "m.npy", tmp_path / "img.png"]
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    for dataset in (
        load_dataset(path, (4, 4, 3), preprocess="vgg16"),
        load_dataset(tmp_path / "m.npy", (4, 4, 3), preprocess="minus1to1"),
        Dataset.from_images([tmp_path / "img.png"], None, (4, 4, 3), preprocess="densenet"),
    ):
        for batch, _ in dataset.batches(4):
            batch += 1.0
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == before


def test_an_image_folder_feeds_a_channels_first_model_transposed(tmp_path: Path) -> None:
    """ONNX / PyTorch models take (C, H, W): images are read as (H, W, C), preprocessed, then transposed."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    Image.fromarray(rgb).save(folder / "a.png")
    ds = load_dataset(folder, (3, 8, 8), preprocess="scale01", resize="stretch")
    assert ds.input_shape == (3, 8, 8) and ds.channels_first
    (x, _), = list(ds.batches(4))
    assert x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0, :, 0, 0], np.array([10, 20, 30]) / 255.0, rtol=1e-6)
    assert ds.subset([0]).channels_first  # a subset keeps the layout
    hwc = load_dataset(folder, (8, 8, 3), resize="stretch")
    assert not hwc.channels_first and next(hwc.batches(1))[0].shape == (1, 8, 8, 3)
