"""MTCNN's output network (ONet) as a `torch.nn.Module`: a real pretrained model with three outputs.

The weights ship in the `facenet-pytorch` wheel (`facenet_pytorch/data/onet.pt`, a legacy pickled state_dict). That
package is never imported (its `__init__` pulls in torchvision): we only locate its folder and read the file with the
restricted unpickler in `legacy_torch`, so no pickle code runs. Layer names and the (W, H, C) flatten order are those of
facenet-pytorch's ONet, which the weights were converted for.

Input: NCHW 48x48 RGB face crops, `(pixel - 127.5) / 128` (`PREPROCESS_MEAN`, `PREPROCESS_SCALE`).
Outputs, in this order: face probability (softmax over [not face, face]), box regression (4), landmarks (10:
five x offsets then five y offsets, relative to the crop).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quantdoctor.backends.torch.export import import_torch
from quantdoctor.demo.legacy_torch import load_legacy_state_dict
from quantdoctor.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

ONET_INPUT_SIZE = 48
PREPROCESS_MEAN = 127.5
PREPROCESS_SCALE = 1 / 128
OUTPUT_NAMES = ("face_prob", "box", "landmarks")
WEIGHTS_PACKAGE = "facenet_pytorch"
PIP_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"


def onet_weights_path() -> Path:
    """The path of `onet.pt` inside the installed facenet-pytorch wheel (found without importing the package).

    Raises:
        ModelLoadError: the wheel is not installed or lacks the file.
    """
    try:
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"MTCNN's weights are not installed; run `{PIP_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "onet.pt"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the installed facenet-pytorch; reinstall with `{PIP_INSTALL}`")
    return path


def onet() -> torch.nn.Module:
    """MTCNN's ONet with facenet-pytorch's pretrained weights, in eval mode.

    Raises:
        UserInputError: PyTorch is not installed.
        ModelLoadError: the weights are missing or do not fit the architecture.
    """
    model = build_onet()
    torch = import_torch()
    arrays = load_legacy_state_dict(onet_weights_path())
    state = {key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in arrays.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped weights
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"onet.pt does not fit MTCNN's ONet ({first})") from None
    return model.eval()


def build_onet() -> torch.nn.Module:
    """ONet with freshly initialised weights."""
    torch = import_torch()
    nn = torch.nn

    class ONet(nn.Module):
        """48x48 crop -> (face probability (N, 2), box (N, 4), landmarks (N, 10))."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3)
            self.prelu1 = nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = nn.Conv2d(32, 64, 3)
            self.prelu2 = nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3 = nn.Conv2d(64, 64, 3)
            self.prelu3 = nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4 = nn.Conv2d(64, 128, 2)
            self.prelu4 = nn.PReLU(128)
            self.dense5 = nn.Linear(128 * 3 * 3, 256)
            self.prelu5 = nn.PReLU(256)
            self.dense6_1 = nn.Linear(256, 2)
            self.softmax6_1 = nn.Softmax(dim=1)
            self.dense6_2 = nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            # dense5's weights expect facenet-pytorch's (W, H, C) flatten order, not PyTorch's (C, H, W).
            x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
            return self.softmax6_1(self.dense6_1(x)), self.dense6_2(x), self.dense6_3(x)

    return ONet()
