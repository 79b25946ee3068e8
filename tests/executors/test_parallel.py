"""Data-parallel diagnose without Ray: shards cut at batch boundaries, and the passes of two shards merged equal one
stream (same runners, so the only difference is the order of float additions: relative 1e-9)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.diagnose.parallel import shards


@pytest.mark.parametrize("n, batch, parts, expected", [
    (32, 4, 2, [(0, 16), (16, 32)]),
    (10, 4, 2, [(0, 8), (8, 10)]),  # 3 batches: the cut stays on a batch boundary
    (5, 16, 3, [(0, 5)]),  # one batch: one shard
    (12, 4, 3, [(0, 4), (4, 8), (8, 12)]),
])
def test_shards_are_contiguous_whole_batches(n, batch, parts, expected):
    assert shards(n, batch, parts) == expected


def close(a, b, rel=1e-9, atol=1e-12) -> bool:
    """Equal, both NaN, or within `rel` of each other (relative to the larger magnitude) plus `atol`."""
    if isinstance(a, float) or isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rel * max(abs(a), abs(b)) + atol
    return a == b


def assert_same(a, b, rel: float, path: str = "", atol: float = 1e-12) -> None:
    """Dataclasses, dicts, sequences and arrays compared field by field: ints/bools/strings exactly, floats to `rel`."""
    import dataclasses

    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), rel, f"{path}.{f.name}", atol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], rel, f"{path}[{k}]", atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, rel, f"{path}[{i}]", atol)
    elif isinstance(a, np.ndarray):
        if a.dtype.kind in "iub":
            assert np.array_equal(a, b), path
        else:
            np.testing.assert_allclose(a, b, rtol=rel, atol=atol, err_msg=path)
    elif isinstance(a, (float, np.floating)):
        assert close(float(a), float(b), rel, atol), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def pair(tiny_model_path, tiny_npz):
    """The tiny model's float and int8 runners (one thread, as on a worker), its evaluation set and matching."""
    from quantdoctor.backends.keras.loader import keras_input_shape, load_keras_model
    from quantdoctor.backends.tflite.runner import TfliteRunner
    from quantdoctor.data import load_dataset
    from quantdoctor.matching.match import match_graphs
    from quantdoctor.quantize.converter import calibration_from, convert_calibrated_pair

    model = load_keras_model(tiny_model_path)
    data = load_dataset(tiny_npz, keras_input_shape(model))
    fb, qb = convert_calibrated_pair(model, "int8", calibration_from(data.subset(np.arange(8))))
    fr, qr = TfliteRunner(fb, 4, num_threads=1), TfliteRunner(qb, 4, num_threads=1)
    return fr, qr, data.subset(np.arange(8, 40)), match_graphs(fr.graph, qr.graph)


def test_two_shards_merged_equal_one_stream(pair):
    from quantdoctor.diagnose.layers import is_dynamic_range
    from quantdoctor.diagnose.parallel import sharded_passes
    from quantdoctor.diagnose.probes import Probes
    from quantdoctor.executors import LocalExecutor
    from quantdoctor.tasks import resolve_task
    from quantdoctor.tasks.base import TaskOptions

    fr, qr, data, matching = pair
    options = TaskOptions(top_k=3)
    task = resolve_task("auto", fr.outputs(), options)
    out = {}
    for parts in (1, 2):
        probes = Probes(fr, qr, matching, is_dynamic_range(qr.graph), 20)  # 20 of 32: isolated on both shards
        with LocalExecutor() as ex:
            passes = sharded_passes(ex, fr, qr, data, matching, task, options, 3, 4, probes, parts=parts, keep=22)
            assert ex.profile.items == parts
        out[parts] = (passes.results(), passes.channel_results(), probes.results(), probes.seen,
                      [p.first_inputs for p in probes.ops])
        # The float outputs kept for the verification samples are the float model's on the first 22 samples.
        kept = passes.kept_outputs()
        first = np.concatenate([fr.run_all(x)[0] for x, _ in data.batches(4, np.arange(22))])
        assert len(kept) == 1 and kept[0].shape == first.shape, (parts, kept[0].shape, first.shape)
        np.testing.assert_array_equal(kept[0], first)
    (one, two) = out[1], out[2]
    (errors1, task1, margins1), (errors2, task2, margins2) = one[0], two[0]
    assert task1.num_samples == task2.num_samples == 32 and one[3] == two[3] == 20
    assert_same(task1, task2, 1e-9)  # counts (agreements, flips) exactly
    assert_same(margins1, margins2, 1e-9)
    assert_same(errors1, errors2, 1e-9)
    assert_same(one[1], two[1], 1e-9)
    # Activation statistics sum moments about a shift taken from each shard's first batch, in float32 differences:
    # they agree to float32 rounding. Grid coverage, isolated and expected errors are float64 sums (1e-9).
    stats = ("float_stats", "quant_stats")
    for f, e in one[2].items():
        assert_same({k: v for k, v in vars(e).items() if k not in stats},
                    {k: v for k, v in vars(two[2][f]).items() if k not in stats}, 1e-9, f"[{f}]")
        for k in stats:
            assert_same(getattr(e, k), getattr(two[2][f], k), 1e-4, f"[{f}].{k}", atol=1e-6)
    assert_same(one[4], two[4], 0.0)  # the first sample's inputs for the one-op repro


def test_sharded_counterfactuals_measure_as_in_process(pair):
    """Each counterfactual measured over two batch ranges and merged gives the in-process outcome."""
    from quantdoctor.diagnose.counterfactuals import Counterfactuals
    from quantdoctor.diagnose.parallel import ShardedCounterfactuals
    from quantdoctor.executors import LocalExecutor

    fr, qr, data, matching = pair

    class TwoParts(LocalExecutor):  # two batch ranges in one process
        workers = 2

    local = Counterfactuals(fr, qr, matching, data, 24, batch_size=4)
    with TwoParts() as ex:
        cf = ShardedCounterfactuals(ex, fr, qr, matching, data, 24, batch_size=4)
        ops = list(cf.candidates[:3])
        for measure in ("op_exact", "alone_quantized"):
            assert_same(getattr(cf, measure)(ops), getattr(local, measure)(ops), 1e-9)
        assert_same(cf.baseline, local.baseline, 1e-9)
        assert cf.count == local.count == 3 and cf.samples == local.samples == 24
        assert ex.profile.items == 2 * 2  # each evaluation but the baseline (run here): two items
