"""Model Explorer node data: the ModelNodeData structure, ids of the right ops, colours in the right direction."""

from __future__ import annotations

import dataclasses
import json

import pytest

from quantdoctor.diagnose.findings import Finding, Severity
from quantdoctor.errors import UserInputError
from quantdoctor.report.model_explorer import (
    BAD_TO_GOOD, GREEN, METRICS, RED, graph_id, node_data, write_model_explorer,
)
from tests.report.conftest import tensor_error


def colour(graph_data: dict, value: float) -> str | None:
    """The colour Model Explorer gives a value: the first threshold whose value is ≥ it (none above the last)."""
    return next((t["bgColor"] for t in graph_data["thresholds"] if value <= t["value"]), None)


def badness(c: str) -> int:
    return len(BAD_TO_GOOD) - 1 - BAD_TO_GOOD.index(c)  # 0 = best colour


@pytest.fixture
def with_finding(diagnosis):
    """The hand-built diagnosis plus a critical finding on b1_dw_relu (position 4) and an isolated error of -6.4 dB."""
    dw = dataclasses.replace(diagnosis.layers[4], isolated=tensor_error(-6.4), expected=tensor_error(42.8))
    exact = dataclasses.replace(diagnosis.layers[0], accumulated=tensor_error(float("inf")))
    layers = (exact,) + diagnosis.layers[1:4] + (dw,) + diagnosis.layers[5:]
    finding = Finding("kernel_defect", Severity.CRITICAL, (4,), ("b1_dw_relu",), ("DEPTHWISE_CONV_2D",), score=0.9)
    info = Finding("float_ops", Severity.INFO, (8, 9), ("predictions",), ("FULLY_CONNECTED",))
    return dataclasses.replace(diagnosis, layers=layers, findings=(finding, info))


def test_structure_is_model_node_data_keyed_by_graph_then_op_index(with_finding):
    data = node_data(with_finding, "accumulated_sqnr")
    assert list(data) == ["main"]
    graph = data["main"]
    assert set(graph) == {"results", "thresholds"}
    assert set(graph["results"]) == {str(l.position) for l in with_finding.layers}
    assert graph["results"]["4"] == {"value": 4.1}
    assert graph["results"]["0"] == {"value": 60}  # inf is clamped to the SQNR cap: JSON has no inf
    values = [t["value"] for t in graph["thresholds"]]
    assert values == sorted(values) and all(set(t) == {"value", "bgColor"} for t in graph["thresholds"])
    json.dumps(data, allow_nan=False)
    isolated = node_data(with_finding, "isolated_sqnr", graph="serving_default")["serving_default"]["results"]
    assert isolated == {"1": {"value": 37.2}, "4": {"value": -6.4}}  # only ops measured alone


@pytest.mark.parametrize("metric", ["accumulated_sqnr", "isolated_sqnr"])
def test_low_sqnr_gets_the_bad_colour(with_finding, metric):
    graph = node_data(with_finding, metric)["main"]
    results = {int(k): v["value"] for k, v in graph["results"].items()}
    assert colour(graph, results[4]) == RED  # the collapsed depthwise op
    assert colour(graph, max(results.values())) == GREEN
    # higher SQNR never gets a worse colour, over the whole range the values can take
    grid = [x / 2 for x in range(-120, 121)]
    ranks = [badness(colour(graph, v)) for v in grid]
    assert all(a >= b for a, b in zip(ranks, ranks[1:]))


def test_higher_severity_gets_the_worse_colour(with_finding):
    graph = node_data(with_finding, "finding_severity")["main"]
    results = {int(k): v["value"] for k, v in graph["results"].items()}
    assert results[4] == 3 and results[8] == 1 and results[9] == 1 and results[0] == 0
    assert colour(graph, 3) == RED and colour(graph, 0) == GREEN
    ranks = [badness(colour(graph, v)) for v in range(4)]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4


def test_unknown_metric_and_a_file_as_folder(with_finding, tmp_path):
    with pytest.raises(UserInputError, match="isolated_sqnr"):
        node_data(with_finding, "sqnr")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserInputError, match="existing file"):
        write_model_explorer(with_finding, tmp_path / "f")


def test_graph_id_follows_the_tflite_adapter(quantized_tflite):
    from ai_edge_litert import schema_py_generated as schema_fb
    import flatbuffers

    def repack(edit) -> bytes:
        model = schema_fb.ModelT.InitFromPackedBuf(quantized_tflite, 0)
        edit(model)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    assert graph_id(quantized_tflite) == "main"  # what the TFLite converter names subgraph 0
    unnamed = repack(lambda m: setattr(m.subgraphs[0], "name", None))
    assert graph_id(unnamed) == "serving_default"  # then the signature key
    bare = repack(lambda m: (setattr(m.subgraphs[0], "name", None), setattr(m, "signatureDefs", [])))
    assert graph_id(bare) == "main"  # then "main" for subgraph 0
    assert graph_id(None) == "main"


@pytest.fixture(scope="module")
def quantized_tflite(tiny_model_path):
    import keras

    from quantdoctor.quantize.converter import convert

    return convert(keras.saving.load_model(tiny_model_path), "dynamic-per-tensor")


def test_cli_writes_node_data_whose_ids_are_the_ops_of_the_file(
    tiny_model_path, tiny_npz, quantized_tflite, tmp_path, capsys
):
    """End to end: node id k is operator k of the .tflite, the op that writes the layer's tensor, with its numbers."""
    from ai_edge_litert.interpreter import Interpreter

    from quantdoctor.cli.main import main

    model = tmp_path / "q.tflite"
    model.write_bytes(quantized_tflite)
    out = tmp_path / "me"
    code = main(["diagnose", str(tiny_model_path), "--data", str(tiny_npz), "--quantized", str(model),
                 "--model-explorer", str(out), "--no-progress", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == sorted([m.file for m in METRICS.values()] + ["README.txt"])
    interpreter = Interpreter(model_content=quantized_tflite)
    interpreter.allocate_tensors()
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    writes = {op["index"]: {names[i] for i in op["outputs"]} for op in interpreter._get_ops_details()}
    sqnr = json.loads((out / "accumulated_sqnr.json").read_text())["main"]["results"]
    severity = json.loads((out / "finding_severity.json").read_text())["main"]["results"]
    ops = [l for l in report["layers"] if l["position"] >= 0]
    assert len(ops) >= 10 and set(sqnr) == set(severity) == {str(l["position"]) for l in ops}
    for l in ops:
        assert l["quant_tensor"] in writes[l["position"]]  # the node Model Explorer draws for operator k
        db = l["accumulated"]["sqnr_db"]
        assert sqnr[str(l["position"])]["value"] == pytest.approx(min(max(float(db), -60.0), 60.0))
    worst = {}
    for f in report["findings"]:
        for p in f["positions"]:
            worst[p] = max(worst.get(p, 0), {"info": 1, "warning": 2, "critical": 3}[f["severity"]])
    assert {int(k): v["value"] for k, v in severity.items() if v["value"]} == worst
    assert "--node_data_paths=" in (out / "README.txt").read_text() and str(model) in (out / "README.txt").read_text()
