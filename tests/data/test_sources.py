"""Raw readers: .npz/.npy arrays (shape fitting, mmap, errors) and image files (folders, labels, resize modes)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantdoctor.data.sources import (
    ArraySource,
    ImageFilesSource,
    load_image,
    open_source,
    resize_crop,
    scan_image_folder,
)
from quantdoctor.errors import DataError, UnknownNameError


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def solid(rgb: tuple[int, int, int], size: int = 6) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (size, size, 3)).copy()


# ---------------------------------------------------------------------------------------------------------- arrays
def test_npz_with_labels_reads_float32_rows(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([3, 1, 0, -1, 2]))
    source = open_source(tmp_path / "d.npz", (4, 4, 3))
    assert len(source) == 5
    assert source.labels.dtype == np.int64
    assert source.labels.tolist() == [3, 1, 0, -1, 2]
    assert source.description == "d.npz (5 samples, labelled)"
    batch = source.read(np.array([4, 0]))
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, x[[4, 0]].astype(np.float32))


def test_npy_is_memory_mapped_and_reads_only_the_batch(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((256, 64, 64, 3)).astype(np.float32)  # 12.6 MB
    np.save(tmp_path / "big.npy", x)
    tracemalloc.start()
    try:
        source = open_source(tmp_path / "big.npy", (64, 64, 3))
        batch = source.read(np.array([7, 200, 3]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.is_memory_mapped
    assert source.labels is None
    assert type(batch) is np.ndarray  # a plain in-memory copy, not a view of the file
    np.testing.assert_array_equal(batch, x[[7, 200, 3]])
    assert peak < x.nbytes / 20, f"reading 3 rows allocated {peak} bytes of a {x.nbytes}-byte file"


def test_grey_arrays_gain_a_channel_axis_for_one_channel_models(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.save(tmp_path / "g.npy", x)
    batch = open_source(tmp_path / "g.npy", (3, 3, 1)).read(np.arange(2))
    assert batch.shape == (2, 3, 3, 1)
    np.testing.assert_array_equal(batch[..., 0], x)


def test_non_image_models_take_generic_shapes(tmp_path: Path) -> None:
    x = np.random.default_rng(2).standard_normal((6, 20))
    np.savez(tmp_path / "v.npz", x=x)
    batch = open_source(tmp_path / "v.npz", (20,)).read(np.array([5]))
    assert batch.shape == (1, 20) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], x[5], rtol=1e-6)


def test_arrays_with_other_height_and_width_are_resized_bilinear(tmp_path: Path) -> None:
    x = np.zeros((2, 4, 6, 3), dtype=np.float32)
    x[0] = 10.0
    x[1, :, :, 2] = np.linspace(0, 250, 6)
    np.save(tmp_path / "s.npy", x)
    source = open_source(tmp_path / "s.npy", (8, 12, 3))
    batch = source.read(np.arange(2))
    assert batch.shape == (2, 8, 12, 3)
    np.testing.assert_allclose(batch[0], 10.0, atol=1e-4)  # a constant image stays constant
    expected = np.asarray(Image.fromarray(x[1, :, :, 2]).resize((12, 8), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(batch[1, :, :, 2], expected)
    assert "resized 4x6 -> 8x12" in source.description


def test_none_dimensions_accept_any_size(tmp_path: Path) -> None:
    np.save(tmp_path / "any.npy", np.zeros((2, 5, 7, 3), dtype=np.uint8))
    assert open_source(tmp_path / "any.npy", (None, None, 3)).read(np.array([0])).shape == (1, 5, 7, 3)


@pytest.mark.parametrize(
    ("shape", "input_shape", "message"),
    [
        ((4, 28, 28, 3), (32, 32, 1), r"data x in bad.npy has shape \(N, 28, 28, 3\) per sample but the model expects "
         r"\(32, 32, 1\); save it as \(N, 32, 32, 1\)"),
        ((4, 28, 28), (28, 28, 3), r"has shape \(N, 28, 28\) per sample but the model expects \(28, 28, 3\)"),
        ((4, 20), (10,), r"has shape \(N, 20\) per sample but the model expects \(10,\)"),
        ((4, 5, 5, 3), (None, None, 1), r"expects \(None, None, 1\)"),
    ],
)
def test_shapes_that_do_not_fit_say_expected_and_got(tmp_path, shape, input_shape, message) -> None:
    np.save(tmp_path / "bad.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(DataError, match=message):
        open_source(tmp_path / "bad.npy", input_shape)


def test_non_numeric_data_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match=r"x has dtype <U1; save x as a numeric array"):
        open_source(tmp_path / "s.npz", (2,))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cannot read .*o\.npy: .*save plain numeric arrays"):
        open_source(tmp_path / "o.npy", (1,))


def test_integer_dtypes_become_float32(tmp_path: Path) -> None:
    np.save(tmp_path / "i.npy", np.array([[-3, 70000]], dtype=np.int32))
    batch = open_source(tmp_path / "i.npy", (2,)).read(np.array([0]))
    assert batch.dtype == np.float32
    assert batch.tolist() == [[-3.0, 70000.0]]


def test_npz_without_x_names_what_it_has(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 3)), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"has no array named 'x' \(it has: images, labels\); save it with np.savez"):
        open_source(tmp_path / "k.npz", (3,))


def test_label_count_must_match_sample_count(tmp_path: Path) -> None:
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 3)), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match=r"y has 3 labels but x has 4 samples"):
        open_source(tmp_path / "l.npz", (3,))


def test_labels_must_be_whole_numbers(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", x=np.zeros((3, 2)), y=np.array([0.0, 1.5, 2.0]))
    with pytest.raises(DataError, match=r"label 1.5 of sample 1 is not a whole number"):
        open_source(tmp_path / "f.npz", (2,))
    np.savez(tmp_path / "w.npz", x=np.zeros((3, 2)), y=np.array([[0.0], [4.0], [-1.0]]))
    labels = open_source(tmp_path / "w.npz", (2,)).labels
    assert labels.dtype == np.int64 and labels.tolist() == [0, 4, -1]


def test_empty_array_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 4, 3)))
    with pytest.raises(DataError, match=r"x holds 0 samples"):
        open_source(tmp_path / "e.npz", (4, 4, 3))


def test_missing_path_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data path .*nope\.npz does not exist"):
        open_source(tmp_path / "nope.npz", (3,))
    (tmp_path / "t.csv").write_text("1,2,3\n")
    message = r"unknown extension '\.csv'; use \.npz with x \(and y\), \.npy, or an image folder"
    with pytest.raises(DataError, match=message):
        open_source(tmp_path / "t.csv", (3,))


def test_corrupt_npz_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"c\.npz is not a NumPy \.npz file"):
        open_source(tmp_path / "c.npz", (3,))


# ---------------------------------------------------------------------------------------------------------- images
def test_folder_labels_follow_sorted_sub_folders(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_png(root / "b_dog" / "1.png", solid((0, 255, 0)))
    write_png(root / "b_dog" / "0.PNG", solid((0, 255, 0)))
    write_png(root / "a_cat" / "x.png", solid((255, 0, 0)))
    write_png(root / "c_owl" / "deep" / "y.png", solid((0, 0, 255)))
    (root / "a_cat" / "notes.txt").write_text("not an image")
    Image.fromarray(solid((9, 9, 9))).save(root / "c_owl" / "z.JPG", format="JPEG")
    source = open_source(root, (6, 6, 3))
    assert source.description == f"image folder {root}/ (3 classes, 5 images)"
    assert source.class_names == ("a_cat", "b_dog", "c_owl")
    assert source.labels.tolist() == [0, 1, 1, 2, 2]
    assert [p.name for p in source.paths] == ["x.png", "0.PNG", "1.png", "y.png", "z.JPG"]
    batch = source.read(np.arange(5))
    assert batch.shape == (5, 6, 6, 3)
    assert batch[0, 3, 3].tolist() == [255.0, 0.0, 0.0]  # RGB order kept
    assert batch[3, 3, 3].tolist() == [0.0, 0.0, 255.0]


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "flat" / f"{i}.png", solid((i, i, i)))
    source = open_source(tmp_path / "flat", (6, 6, 3))
    assert source.labels is None
    assert source.description.endswith("(3 images, no labels)")


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"contains no images \(\.jpg, \.jpeg, \.png, \.bmp, \.gif\)"):
        scan_image_folder(tmp_path / "empty")
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"has 1 class sub-folders but no images"):
        scan_image_folder(tmp_path / "hollow")
    write_png(tmp_path / "mixed" / "cat" / "a.png", solid((1, 1, 1)))
    write_png(tmp_path / "mixed" / "loose.png", solid((1, 1, 1)))
    with pytest.raises(DataError, match=r"mixes 1 loose images \(e\.g\. loose\.png\) with class sub-folders"):
        scan_image_folder(tmp_path / "mixed")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_png(tmp_path / "f" / "good.png", solid((1, 2, 3)))
    (tmp_path / "f" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    source = open_source(tmp_path / "f", (6, 6, 3))
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg: .*remove or replace the file"):
        source.read(np.arange(len(source)))


def centre_marked_image() -> np.ndarray:
    """153x51 blue image, 3x3 red block at the centre (76, 25), green stripe along the left edge."""
    pixels = np.zeros((51, 153, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    pixels[24:27, 75:78] = (255, 0, 0)
    pixels[:, :10] = (0, 255, 0)
    return pixels


def test_crop_resizes_short_side_then_centre_crops(tmp_path: Path) -> None:
    path = write_png(tmp_path / "c.png", centre_marked_image())
    # round(15 * 256 / 224) = 17: 153x51 -> 51x17 (scale 1/3), centre crop 15x15 from column 18, row 1.
    out = load_image(path, (15, 15), "RGB", resize="crop")
    assert out.shape == (15, 15, 3) and out.dtype == np.float32
    assert np.unravel_index(np.argmax(out[..., 0]), (15, 15)) == (7, 7)
    assert out[..., 1].max() == 0.0  # the green left edge is cropped away


def test_stretch_resizes_straight_to_the_model_size(tmp_path: Path) -> None:
    path = write_png(tmp_path / "s.png", centre_marked_image())
    out = load_image(path, (15, 15), "RGB", resize="stretch")
    assert out.shape == (15, 15, 3)
    assert np.unravel_index(np.argmax(out[..., 0]), (15, 15)) == (7, 7)
    assert out[:, 0, 1].min() > 200.0  # the whole width is kept, so the green edge is still there


def test_crop_of_an_image_already_at_cover_size_is_a_plain_centre_crop() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, size=(341, 256, 3), dtype=np.uint8)
    # 224 -> cover 256: a 256-wide image is not resized, then rows round(117/2) = 58 and columns 16 are cut.
    out = np.asarray(resize_crop(Image.fromarray(pixels), (224, 224)))
    np.testing.assert_array_equal(out, pixels[58:282, 16:240])


def test_one_channel_models_get_grey_images(tmp_path: Path) -> None:
    path = write_png(tmp_path / "g.png", solid((255, 0, 0), size=8))
    out = load_image(path, (8, 8), "L", resize="stretch")
    assert out.shape == (8, 8, 1)
    assert out[0, 0, 0] == 76.0  # PIL's ITU-R 601-2 luma of pure red: 255 * 299 / 1000


def test_image_files_source_with_explicit_labels(tmp_path: Path) -> None:
    paths = [write_png(tmp_path / f"{i}.png", solid((i, 0, 0))) for i in range(3)]
    source = ImageFilesSource(paths, [2, -1, 0], (6, 6, 3), resize="stretch", description="three")
    assert source.labels.tolist() == [2, -1, 0]
    assert source.description == "three"
    assert source.read(np.array([2, 1]))[:, 0, 0, 0].tolist() == [2.0, 1.0]
    with pytest.raises(DataError, match=r"y has 2 labels but x has 3 samples"):
        ImageFilesSource(paths, [0, 1], (6, 6, 3))
    with pytest.raises(DataError, match=r"no image files given"):
        ImageFilesSource([], None, (6, 6, 3))


def test_image_sources_need_an_image_model(tmp_path: Path) -> None:
    paths = [write_png(tmp_path / "a.png", solid((1, 1, 1)))]
    with pytest.raises(DataError, match=r"expects \(20,\) per sample, not images of 1 or 3 channels"):
        ImageFilesSource(paths, None, (20,))
    with pytest.raises(DataError, match=r"input size \(None, None, 3\) is not fixed"):
        ImageFilesSource(paths, None, (None, None, 3))
    with pytest.raises(UnknownNameError, match=r"unknown resize mode 'squash'; choose one of: crop, stretch"):
        ImageFilesSource(paths, None, (6, 6, 3), resize="squash")


def test_array_source_accepts_in_memory_arrays_without_copying_them_whole() -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    source = ArraySource(x, None, (3,), "mem")
    batch = source.read(np.array([1]))
    batch[:] = -1.0  # writing to a batch must never reach the user's array
    assert x[1].tolist() == [3.0, 4.0, 5.0]
