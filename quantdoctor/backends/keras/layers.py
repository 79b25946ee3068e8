"""The Keras layer graph as plain data, so matching code never needs keras itself."""

from __future__ import annotations

from dataclasses import dataclass

# Layer classes whose weights the converter quantizes; match coverage is reported for these.
WEIGHTED_LAYER_CLASSES = frozenset(
    {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense"}
)
# Layers the converter folds into the op before them when that op has no other consumer.
FOLDABLE_LAYER_CLASSES = frozenset({"BatchNormalization"})


@dataclass(frozen=True)
class LayerInfo:
    name: str
    class_name: str
    inbound: tuple[str, ...]  # names of the layers feeding it
    output_shape: tuple[int | None, ...] | None  # per sample (batch dimension removed); None if not a single tensor
    position: int  # topological position

    @property
    def has_weights(self) -> bool:
        return self.class_name in WEIGHTED_LAYER_CLASSES


def layer_infos(model) -> tuple[LayerInfo, ...]:
    """Flatten a functional or sequential Keras 3 model into LayerInfo records in topological order."""
    infos = []
    for pos, layer in enumerate(model.layers):
        inbound: list[str] = []
        for node in getattr(layer, "_inbound_nodes", [])[:1]:
            for parent in getattr(node, "parent_nodes", []):
                op = getattr(parent, "operation", None)
                if op is not None and op.name not in inbound:
                    inbound.append(op.name)
        if not inbound and pos > 0 and type(model).__name__ == "Sequential":
            inbound = [model.layers[pos - 1].name]
        infos.append(
            LayerInfo(
                name=layer.name,
                class_name=type(layer).__name__,
                inbound=tuple(inbound),
                output_shape=_per_sample_shape(layer),
                position=pos,
            )
        )
    return tuple(infos)


def _per_sample_shape(layer) -> tuple[int | None, ...] | None:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return None
    return tuple(None if s is None else int(s) for s in tuple(shape)[1:])
