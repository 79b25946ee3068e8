"""Map TFLite tensor names back to the Keras layers they came from.

The converter names an op output after the TF ops fused into it, e.g.
``tiny_1/dw_relu_1/Relu6;tiny_1/dw_bn_1/batchnorm/mul_1;tiny_1/dw_1/depthwise;1``: ``;``-separated locations, each a
``model/layer/op`` scope path where Keras 3 appended ``_1`` to every scope, and a trailing de-duplication digit. A folded
BatchNormalization sometimes leaves no trace in the name (``proj_1/convolution1`` is the conv *and* its BN), and the graph
outputs are renamed (``StatefulPartitionedCall_1:0``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantdoctor.backends.keras.layers import FOLDABLE_LAYER_CLASSES, LayerInfo

_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class LayerLabel:
    layers: tuple[str, ...]  # topological order; the last one is the layer whose output the tensor holds
    how: str  # "name", "name+fold", "output"


def name_candidates(tensor_name: str, layers: dict[str, LayerInfo]) -> list[str]:
    """Keras layer names mentioned in a TFLite tensor name (Keras-3 ``_1`` scope suffix handled)."""
    found: list[str] = []
    for location in tensor_name.split(";"):
        for segment in location.split("/")[:-1]:  # the last segment is the TF op, not a scope
            stripped = _SUFFIX.sub("", segment)
            for cand in (stripped, segment):
                if cand in layers and cand not in found:
                    found.append(cand)
                    break
    return found


class KerasLabeler:
    """Labels float TFLite tensors with the Keras layers folded into them."""

    def __init__(self, layers: tuple[LayerInfo, ...], output_layers: tuple[str, ...]) -> None:
        self.layers = {l.name: l for l in layers}
        self.output_layers = output_layers
        self.consumers: dict[str, list[str]] = {}
        for l in layers:
            for src in l.inbound:
                self.consumers.setdefault(src, []).append(l.name)

    def label_all(
        self, tensors: dict[int, tuple[str, tuple[int, ...]]], graph_outputs: tuple[int, ...]
    ) -> dict[int, LayerLabel]:
        """Label every tensor; ``tensors`` maps index -> (name, per-sample shape)."""
        primary: dict[int, list[str]] = {}
        for idx, (name, shape) in tensors.items():
            cands = self._fitting(name_candidates(name, self.layers), shape)
            if cands:
                primary[idx] = cands
        claimed = {c for cands in primary.values() for c in cands}
        labels: dict[int, LayerLabel] = {}
        for idx, cands in primary.items():
            chain = self._fill_chain(cands)
            extended = self._fold_forward(chain[-1], claimed, tensors[idx][1])
            labels[idx] = LayerLabel(tuple(chain + extended), "name+fold" if extended else "name")
        for i, idx in enumerate(graph_outputs):
            if idx in tensors and idx not in labels and i < len(self.output_layers):
                last = self.output_layers[i]
                labels[idx] = LayerLabel(tuple(self._walk_back(last, claimed)), "output")
        return labels

    def _fitting(self, cands: list[str], shape: tuple[int, ...]) -> list[str]:
        """Candidates ordered by topology; drop the latest ones while their output shape contradicts the tensor's."""
        cands = sorted(cands, key=lambda n: self.layers[n].position)
        while cands and not self._shape_fits(cands[-1], shape):
            cands.pop()
        return cands

    def _shape_fits(self, name: str, shape: tuple[int, ...]) -> bool:
        s = self.layers[name].output_shape
        if s is None or len(s) != len(shape):
            return s is None
        return all(a is None or a == b for a, b in zip(s, shape))

    def _fill_chain(self, cands: list[str]) -> list[str]:
        """Add the single-input layers between the first and last candidate (e.g. a BN fused between conv and ReLU)."""
        first, last = cands[0], cands[-1]
        path = [last]
        cur = last
        while cur != first:
            inbound = self.layers[cur].inbound
            if len(inbound) != 1:
                return cands
            cur = inbound[0]
            path.append(cur)
            if len(path) > 8:
                return cands
        return list(reversed(path))

    def _fold_forward(self, last: str, claimed: set[str], shape: tuple[int, ...]) -> list[str]:
        extended: list[str] = []
        cur = last
        while True:
            nxt = self.consumers.get(cur, [])
            if len(nxt) != 1:
                return extended
            layer = self.layers[nxt[0]]
            if layer.class_name not in FOLDABLE_LAYER_CLASSES or layer.name in claimed:
                return extended
            if not self._shape_fits(layer.name, shape):
                return extended
            extended.append(layer.name)
            cur = layer.name

    def _walk_back(self, last: str, claimed: set[str]) -> list[str]:
        """For renamed graph outputs: the output layer plus unclaimed single-input layers right before it."""
        path = [last]
        cur = last
        while True:
            inbound = self.layers[cur].inbound
            if len(inbound) != 1 or inbound[0] in claimed or self.layers[inbound[0]].class_name == "InputLayer":
                return list(reversed(path))
            cur = inbound[0]
            path.append(cur)
