"""The ONNX graph view: indexing, quantization parameters of QDQ models, float ↔ QDQ pairing through ORT's names."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.backends.onnx.graph import graph_from_onnx, tensor_ids
from quantdoctor.backends.onnx.loader import normalize, parse_model
from quantdoctor.matching.match import match_graphs, through_conversions
from tests.backends.onnx.models import MODELS, SCHEMES, STATIC_SCHEMES, float_model, quantized


def test_float_graph_indexes_nodes_and_tensors():
    g = graph_from_onnx(float_model("branchy"))
    assert [op.type for op in g.ops] == ["Conv", "Relu", "Conv", "Add", "Conv", "Concat", "GlobalAveragePool",
                                         "Flatten", "Gemm"]
    ids = tensor_ids(g)
    assert g.inputs == (ids["image"],) and g.outputs == (ids["logits"],)
    assert g.tensors[ids["image"]].shape == (1, 3, 10, 10)  # the symbolic batch dim shows as 1
    assert g.tensors[ids["cat"]].shape == (1, 20, 10, 10) and g.tensors[ids["cat"]].dtype == "float32"
    assert g.tensors[ids["w1"]].is_constant and g.tensors[ids["w1"]].producer is None
    assert g.tensors[ids["res_add"]].consumers == (4, 5)
    assert [g.is_weighted(op) for op in g.ops].count(True) == 4
    assert g.activations() == [ids[n] for n in ("image", "stem", "stem_relu", "res_conv", "res_add", "branch", "cat",
                                                "gap", "flat", "logits")]


def test_qdq_graph_carries_quant_params_on_integer_tensors():
    g = graph_from_onnx(quantized("branchy", "ort-qdq-int8"))
    ids = tensor_ids(g)
    weight = g.tensors[ids["w1_quantized"]]
    assert weight.is_constant and weight.dtype == "int8"
    assert weight.quant.axis == 0 and len(weight.quant.scales) == 12 and set(weight.quant.zero_points) == {0}
    act = g.tensors[ids["stem_relu_QuantizeLinear_Output"]]
    assert act.dtype == "int8" and act.quant.granularity == "per-tensor" and act.quant.axis is None
    assert g.tensors[ids["stem_relu"]].quant is None  # the Conv writes float; its QuantizeLinear rounds
    conv = g.op(g.tensors[ids["stem_relu"]].producer)
    assert conv.type == "Conv"
    w_dq = g.op(g.tensors[conv.inputs[1]].producer)
    assert g.is_weight_dequantize(w_dq) and not g.is_weight_dequantize(g.op(g.tensors[conv.inputs[0]].producer))
    info = g.weight_info(conv, dynamic_range=False)
    assert info.tensor == "w1_quantized" and info.storage == "int8" and info.quant.granularity == "per-channel"
    assert g.activation_inputs(conv) == (ids["image_DequantizeLinear_Output"],)
    # weight unpacks are no activations; every activation is an op output or the input
    assert ids["w1_DequantizeLinear_Output"] not in g.activations()


def test_per_tensor_and_uint8_schemes_are_described():
    per_tensor = graph_from_onnx(quantized("chain", "ort-qdq-int8-per-tensor"))
    assert per_tensor.tensors[tensor_ids(per_tensor)["w2_quantized"]].quant.granularity == "per-tensor"
    u8 = graph_from_onnx(quantized("chain", "ort-qdq-uint8"))
    q = u8.tensors[tensor_ids(u8)["relu1_QuantizeLinear_Output"]]
    assert q.dtype == "uint8" and q.quant.zero_points == (0,)  # a Relu output: [0, max] on [0, 255]
    a16 = graph_from_onnx(quantized("chain", "ort-qdq-a16w8"))
    assert a16.tensors[tensor_ids(a16)["relu1_QuantizeLinear_Output"]].dtype == "int16"


def test_dynamic_graph_has_runtime_quantization_as_conversions():
    g = graph_from_onnx(quantized("branchy", "ort-dynamic"))
    types = [op.type for op in g.ops]
    assert "ConvInteger" in types and "MatMulInteger" in types and "DynamicQuantizeLinear" in types
    dq = next(op for op in g.ops if op.type == "DynamicQuantizeLinear")
    assert g.is_conversion(dq) and not g.is_weight_dequantize(dq)
    assert g.tensors[dq.outputs[0]].quant is None  # its scale exists only at run time
    conv = next(op for op in g.ops if op.type == "ConvInteger")
    assert g.weight_info(conv, dynamic_range=True).storage == "int8"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", MODELS)
def test_pairing_covers_every_conv_and_gemm(kind, scheme):
    fg, qg = graph_from_onnx(float_model(kind)), graph_from_onnx(quantized(kind, scheme))
    m = match_graphs(fg, qg)
    paired_q = {p.quant_index for p in m.pairs} | {through_conversions(qg, p.quant_index) for p in m.pairs}
    paired_f = {p.float_index for p in m.pairs}
    weighted_q = [op for op in qg.ops if op.type in ("Conv", "Gemm")]
    for op in weighted_q:  # a QDQ Gemm writing a graph output is reached through the output's Q/DQ pair
        assert op.outputs[0] in paired_q, qg.tensors[op.outputs[0]].name
    for op in fg.ops:
        if op.type not in ("Conv", "Gemm"):
            continue
        t = op.outputs[0]
        if t in paired_f:
            continue
        # only a Conv whose Relu ORT folded into the output grid (asymmetric activations) has no twin tensor
        (relu,) = [fg.op(c) for c in fg.tensors[t].consumers]
        assert scheme in STATIC_SCHEMES and relu.type == "Relu", fg.tensors[t].name
        twin = next(p.quant_index for p in m.pairs if p.float_index == relu.outputs[0])
        assert qg.producer_type(through_conversions(qg, twin)) == "Conv"
    assert all(p.method.value == "exact_id" for p in m.pairs)
    # In a QDQ graph a tensor's quantized value is its QuantizeLinear's output: that is what each pair points at
    inner = [p for p in m.pairs if p.quant_index not in (*qg.inputs, *qg.outputs)]
    assert qg.qdq == (scheme in STATIC_SCHEMES)
    assert inner and not qg.qdq or all(qg.producer_type(p.quant_index) == "QuantizeLinear" for p in inner)


def test_normalize_folds_constants_and_orders_nodes():
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Add", ["x", "c"], ["y"], name="add"),  # listed before the Constant it reads
        helper.make_node("Constant", [], ["c"], value_float=2.0),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data = normalize(model.SerializeToString())
    proto = parse_model(data)
    assert [n.op_type for n in proto.graph.node] == ["Add"]
    assert [t.name for t in proto.graph.initializer] == ["c"]
    assert normalize(data) == data
    g = graph_from_onnx(model.SerializeToString())
    assert g.tensors[tensor_ids(g)["c"]].is_constant
    assert float(onnx.numpy_helper.to_array(proto.graph.initializer[0])) == np.float32(2.0)
