"""Data for a model with several inputs: an .npz with one array per input, streamed as tuples of batches.

The arrays are found by input name (the model's name, or the name without a converter's `serving_default_` prefix and
`:0` suffix), or by position as `x0`, `x1`, ...; `y` holds optional labels, as for one input. Image inputs (per-sample
rank 3) get the preprocess preset; other inputs (vectors, masks, ...) are fed as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from quantdoctor.data.arrays import ArraySource, _check_array_header, _UNREADABLE
from quantdoctor.data.base import InputShape, as_labels
from quantdoctor.errors import DataError


@dataclass(frozen=True)
class InputSpecs:
    """Names and per-sample shapes of a model's inputs (two or more), in the model's input order."""

    names: tuple[str, ...]
    shapes: tuple[InputShape, ...]

    def __len__(self) -> int:
        return len(self.names)


def short_input_name(name: str) -> str:
    """An input name without what converters add: `serving_default_image:0` → `image`."""
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    return name.split(":")[0]


class MultiDataset:
    """One `Dataset` per model input over the same samples; `batches` yields a tuple of arrays per batch."""

    def __init__(self, parts: Sequence, specs: InputSpecs, labels: np.ndarray | None, description: str) -> None:
        self.parts = tuple(parts)
        self.specs = specs
        self._labels = labels  # over the source samples
        self._description = description

    @property
    def input_shape(self) -> InputSpecs:
        """The inputs' names and shapes (what `load_dataset` takes to read a matching calibration set)."""
        return self.specs

    @property
    def names(self) -> tuple[str, ...]:
        """The inputs' names without converter decorations, in this dataset's order."""
        return tuple(short_input_name(n) for n in self.specs.names)

    def ordered_as(self, names: Sequence[str]) -> MultiDataset:
        """The same samples with the inputs in the order of `names` (a runtime's input names, e.g. LiteRT's
        `serving_default_features:0`, which sorts the signature's inputs by name).

        Raises:
            DataError: a name matches none of this dataset's inputs.
        """
        mine = self.names
        order = []
        for name in names:
            short = short_input_name(name)
            if short not in mine:
                raise DataError(f"the model's input '{short}' is not among the data's inputs ({', '.join(mine)}); "
                                "key the arrays by the model's input names")
            order.append(mine.index(short))
        if order == list(range(len(mine))):
            return self
        specs = InputSpecs(tuple(self.specs.names[i] for i in order), tuple(self.specs.shapes[i] for i in order))
        return MultiDataset([self.parts[i] for i in order], specs, self._labels, self._description)

    @property
    def preprocess(self) -> str:
        return self.parts[0].preprocess

    def __len__(self) -> int:
        return len(self.parts[0])

    @property
    def labels(self) -> np.ndarray | None:
        return None if self._labels is None else self._labels[self.parts[0].source_indices]

    @property
    def source_indices(self) -> np.ndarray:
        return self.parts[0].source_indices

    @property
    def description(self) -> str:
        total = len(self.parts[0].source)
        return self._description if len(self) == total else f"{self._description}, {len(self)} of {total} samples"

    def subset(self, indices) -> MultiDataset:
        return MultiDataset([p.subset(indices) for p in self.parts], self.specs, self._labels, self._description)

    def batches(self, batch_size: int, indices: np.ndarray | None = None) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray]]:
        """Yield `(arrays, sample_indices)`: one preprocessed float32 array per input, in the model's input order."""
        streams = [p.batches(batch_size, indices) for p in self.parts]
        for items in zip(*streams):
            yield tuple(x for x, _ in items), items[0][1]

    def check_labels(self, num_classes: int) -> None:
        """As `Dataset.check_labels`, over this dataset's labels."""
        from quantdoctor.data.dataset import check_class_labels

        check_class_labels(self.labels, self.source_indices, num_classes)


def load_multi_dataset(path: str | Path, specs: InputSpecs, *, preprocess: str = "none") -> MultiDataset:
    """The dataset behind a `--data` .npz for a model with several inputs.

    Raises:
        DataError: not an .npz, an input without its array, arrays of different lengths, or shapes that do not fit.
    """
    from quantdoctor.data.dataset import Dataset

    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".npz":
        raise DataError(
            f"the model has {len(specs)} inputs ({', '.join(specs.names)}); give --data as an .npz with one array "
            f"per input, keyed by input name or x0..x{len(specs) - 1} (an image folder or .npy feeds one input)"
        )
    if not path.exists():
        raise DataError(f"data path {path} does not exist; give an .npz with one array per input")
    _check_array_header(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except _UNREADABLE as exc:
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split()) or type(exc).__name__}; "
                        "save plain numeric arrays with np.savez") from None
    chosen = [_array_for(arrays, name, i, path, specs) for i, name in enumerate(specs.names)]
    lengths = {len(a) for a in chosen}
    if len(lengths) > 1:
        raise DataError(f"{path}: the input arrays hold different numbers of samples ({sorted(lengths)}); "
                        "give every input the same samples")
    labels = None if "y" not in arrays else as_labels(arrays["y"], len(chosen[0]), str(path))
    parts = []
    for name, shape, x in zip(specs.names, specs.shapes, chosen):
        source = ArraySource(x, None, shape, f"{path.name}[{short_input_name(name)}]", where=str(path))
        parts.append(Dataset(source, shape, preprocess if len(shape) == 3 else "none"))
    label_text = "labelled" if labels is not None else "no labels"
    description = f"{path.name} ({len(chosen[0])} samples, {len(specs)} inputs, {label_text})"
    return MultiDataset(parts, specs, labels, description)


def _array_for(arrays: dict[str, np.ndarray], name: str, position: int, path: Path, specs: InputSpecs) -> np.ndarray:
    for key in (name, short_input_name(name), f"x{position}"):
        if key in arrays:
            return arrays[key]
    wanted = ", ".join(f"'{short_input_name(n)}' (or x{i})" for i, n in enumerate(specs.names))
    raise DataError(f"{path} has no array for input '{short_input_name(name)}' (it has: "
                    f"{', '.join(sorted(arrays)) or 'nothing'}); save one array per input: {wanted}")
