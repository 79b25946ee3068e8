"""diagnose on a PyTorch module given through the API: exported to ONNX, quantized with ONNX Runtime, every weighted op
labelled with the module path it came from (as Keras layer names label TFLite ops)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from quantdoctor import diagnose  # noqa: E402
from tests.backends.torch.models import INPUT_SHAPE, TinyNet  # noqa: E402


def test_a_torch_module_is_diagnosed_with_module_path_labels(tmp_path):
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = np.random.default_rng(0).uniform(-1, 1, (48, *INPUT_SHAPE)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    d = diagnose(net, tmp_path / "data.npz", scheme="ort-qdq-int8", calib_count=16)
    assert d.run.float_kind == "torch" and d.run.float_model == "<TinyNet>"
    convs = [l for l in d.layers if l.op_type == "Conv"]
    # BN folded into the conv and the ReLU into its output grid: like a fused Keras conv+BN+ReLU, the layer is named
    # by the module whose output the tensor holds
    assert [l.label for l in convs] == ["features.0.0.act", "features.0.1.act"]
    assert any(l.label == "head.1" for l in d.layers)
    assert d.model.num_samples == 32


def test_a_torch_model_needs_array_data(tmp_path):
    from quantdoctor.errors import DataError

    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="takes its input shape from the data"):
        diagnose(TinyNet(), tmp_path / "images", scheme="ort-qdq-int8")


def test_a_torch_export_program_file_on_the_cli(tmp_path, capsys):
    import json

    from quantdoctor.cli.main import main

    net = TinyNet().eval()
    program = torch.export.export(net, (torch.zeros(2, *INPUT_SHAPE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "tiny.pt2")
    x = np.random.default_rng(1).uniform(-1, 1, (40, *INPUT_SHAPE)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    code = main(["diagnose", str(tmp_path / "tiny.pt2"), "--data", str(tmp_path / "data.npz"), "--scheme",
                 "ort-qdq-int8", "--calib-count", "8", "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["float_kind"] == "torch"
    assert {"features.0.0.act", "head.1"} <= {l["label"] for l in report["layers"]}
