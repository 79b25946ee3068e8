import math

import pandas as pd

from quantdoctor.report.frame import COLUMNS, layers_frame


def test_one_row_per_layer_in_position_order(diagnosis):
    reversed_diag = type(diagnosis)(**{**diagnosis.__dict__, "layers": diagnosis.layers[::-1]})
    df = layers_frame(reversed_diag)
    assert list(df.columns) == list(COLUMNS)
    assert df["position"].tolist() == list(range(9))
    assert df.loc[4, "label"] == "b1_dw_relu"


def test_flat_values(diagnosis):
    df = layers_frame(diagnosis).set_index("position")
    onset = df.loc[4]
    assert onset["keras_layers"] == "b1_dw+b1_dw_bn+b1_dw_relu"
    assert onset["shape"] == "1x8x8x24"
    assert onset["match"] == "exact_id"
    assert onset["sqnr_db"] == 4.1 and onset["input_sqnr_db"] == 31.2
    assert math.isclose(onset["sqnr_drop_db"], 27.1)
    assert math.isclose(onset["noise_added"], 10 ** -0.41 - 10 ** -3.12)
    assert (onset["act_dtype"], onset["act_granularity"], onset["act_scale"]) == ("int8", "per-tensor", 0.0235)
    assert (onset["weight_storage"], onset["weight_granularity"], onset["weight_kernel"]) == \
        ("int8", "per-tensor", "integer")
    assert onset["isolated_sqnr_db"] == 6.1
    assert df.loc[3, "weight_granularity"] == "per-channel"


def test_missing_values_are_missing_and_inf_is_kept(diagnosis):
    df = layers_frame(diagnosis).set_index("position")
    pool = df.loc[7]  # MEAN: no weights, activation left in float, no isolated measurement
    assert pool["act_dtype"] == "float"
    missing = ["act_granularity", "act_scale", "weight_storage", "weight_kernel", "rmse_over_scale", "isolated_sqnr_db"]
    assert pool[missing].isna().all()
    assert not pd.isna(df.loc[4, "isolated_sqnr_db"])
    assert df.loc[0, "input_sqnr_db"] == math.inf
    assert df["sqnr_db"].dtype.kind == "f" and df.index.dtype.kind == "i"


def test_diagnosis_method_gives_the_same_frame(diagnosis):
    assert diagnosis.layers_frame().equals(layers_frame(diagnosis))
