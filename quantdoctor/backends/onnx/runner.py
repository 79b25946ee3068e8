"""Run an ONNX model with ONNX Runtime and read back any tensor, dequantized to float32.

One session serves `run` and `capture`: the normalized model with every tensor an op writes declared a graph output,
optimizations disabled (`loader`), so any tensor can be fetched by name and nothing is fused away. `session.run`
fetches only the tensors asked for; memory is one batch of activations. Numerics are the QDQ graph as written (float
ops on dequantized values, rounding at each QuantizeLinear), not the fused integer kernels an optimized session would
pick (on the test models the two agree to 1e-5: `test_run_equals_onnxruntime`).

Batch: a model whose first input dim is symbolic runs any batch at once. A model with a fixed batch dim B (often 1,
as exported) runs the batch in chunks of B, the last chunk zero-padded, and the chunks joined along axis 0 (a value
without that batch dim, e.g. the run-time scale of a DynamicQuantizeLinear, is the first chunk's). The graph is not
rewritten to a symbolic batch: a Reshape to a constant shape would break.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from quantdoctor.backends.base import Batch, Graph, TensorSpec, as_inputs
from quantdoctor.backends.onnx.loader import read_onnx
from quantdoctor.backends.onnx.subgraph import OpRunner, Splice, downstream, from_tensor, to_tensor
from quantdoctor.errors import DataError

__all__ = ["OnnxRunner", "read_onnx"]


def capturing_model(model: bytes, graph: Graph) -> bytes:
    """The model with every tensor an op writes also declared a graph output (value-info typed where known)."""
    from onnx import helper

    from quantdoctor.backends.onnx.loader import parse_model

    proto = parse_model(model)
    declared = {o.name for o in proto.graph.output}
    typed = {vi.name: vi for vi in proto.graph.value_info}
    for op in graph.ops:
        for t in op.outputs:
            name = graph.tensors[t].name if t >= 0 else ""
            if not name or name in declared:
                continue
            declared.add(name)
            proto.graph.output.append(typed[name] if name in typed else helper.make_empty_tensor_value_info(name))
    return proto.SerializeToString()


class OnnxRunner:
    """An ONNX Runtime session that can return any intermediate tensor.

    Args:
        model: ONNX bytes (normalized on load: `model` holds the normalized bytes every index refers to).
        batch_size: the largest batch callers pass (kept for symmetry with the TFLite runner; batches run unpadded
            unless the model fixes its batch dim).
        num_threads: intra-op threads; default all cores.

    Raises:
        ModelLoadError: the bytes are not a model ORT can load.
    """

    def __init__(self, model: bytes, batch_size: int = 16, num_threads: int | None = None) -> None:
        from quantdoctor.backends.onnx.graph import graph_from_onnx, with_observed
        from quantdoctor.backends.onnx.loader import load_session, normalize

        self.model = normalize(bytes(model))
        self.batch_size = batch_size
        self._threads = num_threads
        graph = graph_from_onnx(self.model)
        self._session = load_session(capturing_model(self.model, graph), num_threads=num_threads)
        self._capturing = graph  # what `release` needs to make the session again
        by_name = {i.name: i for i in self._session.get_inputs()}
        self._ins = [by_name[graph.tensors[t].name] for t in graph.inputs]  # the graph's input order
        self._in = self._ins[0]
        dim0 = self._in.shape[0] if self._in.shape else None
        self._fixed_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None
        self._in_dtypes = [np.dtype(graph.tensors[t].dtype) if graph.tensors[t].dtype != "undefined"
                           else np.dtype(np.float32) for t in graph.inputs]
        self._batch_major = downstream(graph, graph.inputs)
        self.graph: Graph = graph
        unknown = [t for t in graph.activations()
                   if graph.tensors[t].dtype == "undefined" or not graph.tensors[t].shape]
        if unknown and all(isinstance(d, int) for i in self._ins for d in i.shape[1:]):
            # shape inference could not type every tensor: take what one all-zero sample shows
            probe = tuple(np.zeros((self._fixed_batch or 1, *i.shape[1:]), np.float32) for i in self._ins)
            self.graph = with_observed(graph, self._fetch(probe, unknown, raw=True))
        self._op_runner: OpRunner | None = None

    def release(self) -> None:
        """Drop the capturing session and its buffers; the next run makes it again."""
        self._session = None

    def inputs(self) -> list[TensorSpec]:
        infos = [self.graph.tensors[t] for t in self.graph.inputs]
        return [TensorSpec(info.name, tuple(info.shape[1:]), info.dtype) for info in infos]

    def outputs(self) -> list[TensorSpec]:
        infos = [self.graph.tensors[t] for t in self.graph.outputs]
        return [TensorSpec(info.name, tuple(info.shape[1:]), info.dtype) for info in infos]

    def _feed(self, batch: Batch) -> list[np.ndarray]:
        arrays = as_inputs(batch)
        if len(arrays) != len(self._ins):
            raise DataError(f"the model has {len(self._ins)} inputs but the batch holds {len(arrays)} array(s); "
                            "give one array per input")
        return [to_tensor(np.asarray(x), self.graph.tensors[t].quant, dtype)
                for x, t, dtype in zip(arrays, self.graph.inputs, self._in_dtypes)]

    def _fetch(self, batch: Batch, indices: Sequence[int], raw: bool = False) -> dict[int, np.ndarray]:
        """Values of the tensors produced by ops (float32 unless raw), batch run in chunks if the model fixes it."""
        names = [self.graph.tensors[i].name for i in indices]
        if not names:
            return {}
        xs = self._feed(batch)
        n = xs[0].shape[0]
        step = self._fixed_batch or max(n, 1)
        chunks: list[list[np.ndarray]] = []
        for start in range(0, max(n, 1), step):
            feed = {}
            for info, x in zip(self._ins, xs):
                part = x[start:start + step]
                if part.shape[0] < step:
                    part = np.concatenate([part, np.zeros((step - part.shape[0], *part.shape[1:]), part.dtype)])
                feed[info.name] = part
            if self._session is None:  # released: made again
                from quantdoctor.backends.onnx.loader import load_session

                self._session = load_session(capturing_model(self.model, self._capturing), num_threads=self._threads)
            try:
                values = self._session.run(names, feed)
            except Exception as exc:  # wrong shape or dtype: ORT's first line says which
                text = str(exc).strip().splitlines()
                first = text[0] if text else type(exc).__name__
                raise DataError(f"ONNX Runtime cannot run the batch: {first}") from None
            chunks.append(values if raw else [from_tensor(v, self.graph.tensors[i].quant)
                                              for v, i in zip(values, indices, strict=True)])
        out = {}
        for k, i in enumerate(indices):
            parts = [c[k] for c in chunks]
            if i in self._batch_major and all(p.ndim and p.shape[0] == step for p in parts):
                out[i] = np.concatenate(parts)[:n]
            else:  # computed from constants alone, or a per-chunk scalar (a run-time scale): the first chunk's
                out[i] = parts[0]
        return out

    def run(self, batch: Batch) -> np.ndarray:
        """The first graph output for a float batch, as float32 (dequantized if integer)."""
        return self.capture(batch, [self.graph.outputs[0]])[self.graph.outputs[0]]

    def run_all(self, batch: Batch) -> list[np.ndarray]:
        """Every graph output for a float batch, in the graph's order, as float32 (dequantized if integer)."""
        values = self.capture(batch, list(self.graph.outputs))
        return [values[t] for t in self.graph.outputs]

    def capture(self, batch: Batch, names: Sequence[int], copy: bool = True) -> dict[int, np.ndarray]:
        """Run a batch and return the float32 values of the given tensors (by index).

        Graph inputs come back as fed, constants as stored (dequantized), everything else as the session computed it.
        `copy` is accepted for the protocol: ORT always returns fresh arrays.
        """
        from onnx import numpy_helper

        from quantdoctor.backends.onnx.loader import parse_model

        indices = [int(i) for i in names]
        computed = [i for i in indices if self.graph.tensors[i].producer is not None]
        out = self._fetch(batch, computed)
        for i in indices:
            info = self.graph.tensors[i]
            if i in out:
                continue
            if i in self.graph.inputs:
                out[i] = from_tensor(self._feed(batch)[self.graph.inputs.index(i)], info.quant)
            elif info.is_constant:
                init = next(t for t in parse_model(self.model).graph.initializer if t.name == info.name)
                out[i] = from_tensor(numpy_helper.to_array(init), info.quant)
        return {i: out[i] for i in indices}

    def splice(self, replaced: Sequence[int]) -> Splice:
        """This model run with ops `replaced` computed by the caller (see `Splice`)."""
        return Splice(self.model, self.graph, replaced, num_threads=self._threads)

    def op_runner(self, constants: dict[int, dict[int, np.ndarray]] | None = None) -> OpRunner:
        """Single ops of this model, each cut out and run alone (built on first use, kept); with `constants` (op →
        tensor → array) a separate runner whose cuts carry those initializers instead."""
        if constants is not None:
            return OpRunner(self.model, num_threads=self._threads, constants=constants, graph=self.graph)
        if self._op_runner is None:
            self._op_runner = OpRunner(self.model, num_threads=self._threads, graph=self.graph)
        return self._op_runner

    def kernel_runner(self):
        """QDQ ops with their (de)quantize neighbours, run with graph optimizations on: ORT's fused integer kernels
        (QLinearConv, QGemm, ...), i.e. the numerics a deployed, optimized session computes."""
        from quantdoctor.backends.onnx.reference import OptimizedOpRunner

        if getattr(self, "_kernels", None) is None:
            self._kernels = OptimizedOpRunner(self.model, self.graph, num_threads=self._threads)
        return self._kernels

    def reference_runner(self):
        """The same QDQ cuts evaluated by ONNX's reference evaluator (`onnx.reference`): the standard's semantics."""
        from quantdoctor.backends.onnx.reference import ReferenceOpRunner

        if getattr(self, "_reference", None) is None:
            self._reference = ReferenceOpRunner(self.model, self.graph)
        return self._reference

    def constant(self, index: int) -> np.ndarray:
        """An initializer as stored (integers stay integers)."""
        from onnx import numpy_helper

        name = self.graph.tensors[index].name
        init = self._initializers().get(name)
        if init is None:
            raise DataError(f"tensor {index} ({name}) is not a constant of the model")
        return numpy_helper.to_array(init)

    def _initializers(self) -> dict:
        """Initializer protos by name, from one parse of the model (callers read every weight in turn)."""
        if getattr(self, "_init_by_name", None) is None:
            from quantdoctor.backends.onnx.loader import parse_model

            self._init_by_name = {t.name: t for t in parse_model(self.model).graph.initializer}
        return self._init_by_name

    @classmethod
    def from_path(cls, path: str | Path, batch_size: int = 16) -> OnnxRunner:
        return cls(read_onnx(path), batch_size=batch_size)
