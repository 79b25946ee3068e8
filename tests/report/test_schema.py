import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest

from quantdoctor.diagnose.results import SCHEMA_VERSION

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator, doc):
    return [e.message for e in validator.iter_errors(doc)]


def test_schema_version_matches_the_code():
    assert json.loads(SCHEMA.read_text())["properties"]["schema_version"] == {"const": SCHEMA_VERSION}


def test_reports_validate(validator, diagnosis, healthy_diagnosis):
    for d in (diagnosis, healthy_diagnosis):
        assert _errors(validator, json.loads(d.to_json())) == []


def test_inf_and_nan_strings_validate(validator, diagnosis):
    doc = json.loads(diagnosis.to_json())
    assert doc["layers"][0]["input_sqnr_db"] == "inf"  # the stem's exact input
    doc["layers"][1]["accumulated"]["sqnr_db"] = "nan"
    doc["model"]["logit_sqnr_db"] = "-inf"
    assert _errors(validator, doc) == []


@pytest.mark.parametrize("breakage", [
    lambda d: d["layers"][2].pop("accumulated"),
    lambda d: d["layers"][2].__setitem__("extra", 1),
    lambda d: d.__setitem__("extra", 1),
    lambda d: d.__setitem__("schema_version", "0.9"),
    lambda d: d["layers"][0]["accumulated"].__setitem__("sqnr_db", "infinity"),
    lambda d: d["layers"][0].__setitem__("match", "guess"),
    lambda d: d["model"].__setitem__("quant_top1", "0.3"),
    lambda d: d["unmatched"][0].__setitem__("side", "both"),
    lambda d: d.pop("coverage"),
])
def test_broken_documents_fail(validator, diagnosis, breakage):
    doc = copy.deepcopy(json.loads(diagnosis.to_json()))
    breakage(doc)
    assert _errors(validator, doc) != []


def test_json_has_no_bare_inf_or_nan(diagnosis):
    text = diagnosis.to_json()
    assert "Infinity" not in text and "NaN" not in text
    assert math.isinf(float(json.loads(text)["layers"][0]["input_sqnr_db"]))


def test_task_reports_validate_and_carry_the_task(validator, detect_diagnosis, segment_diagnosis,
                                                  classify_task_diagnosis):
    for d in (detect_diagnosis, segment_diagnosis, classify_task_diagnosis):
        doc = json.loads(d.to_json())
        assert _errors(validator, doc) == []
        # the task section round-trips: what the JSON holds is the task's own dict (tuples as lists)
        assert doc["task"] == json.loads(json.dumps(d.task.to_dict()))
    doc = json.loads(detect_diagnosis.to_json())
    assert doc["model"] is None
    assert doc["task"]["headline"] == "f1" and doc["task"]["metrics"]["f1"] == 0.12
    group = doc["task"]["outputs"][0]["groups"][1]
    assert group == {"name": "scores [4:14]", "start": 4, "stop": 14, "float_min": 0.0, "float_max": 1.0,
                     "sqnr_db": 2.1, "levels": 2.0}
    assert doc["task"]["details"]["example"]["float"][0] == [4.0, 6.0, 20.0, 26.0, 3, 0.98]


def test_a_report_without_task_key_still_validates(validator, diagnosis):
    doc = json.loads(diagnosis.to_json())
    assert doc.pop("task") is None
    assert _errors(validator, doc) == []


@pytest.mark.parametrize("breakage", [
    lambda d: d["task"].pop("headline"),
    lambda d: d["task"]["metrics"].__setitem__("f1", "0.12"),
    lambda d: d["task"]["outputs"][0].__setitem__("extra", 1),
    lambda d: d["task"]["outputs"][0]["groups"][0].pop("levels"),
    lambda d: d["task"]["outputs"][0].__setitem__("shape", [84.5, 14]),
])
def test_broken_task_sections_fail(validator, detect_diagnosis, breakage):
    doc = json.loads(detect_diagnosis.to_json())
    breakage(doc)
    assert _errors(validator, doc) != []


def test_inf_and_nan_in_the_task_validate(validator, detect_diagnosis):
    task = detect_diagnosis.task
    out = dataclasses.replace(task.outputs[0], sqnr_db=math.inf, relative_error=math.nan)
    d = dataclasses.replace(detect_diagnosis, task=dataclasses.replace(task, outputs=(out,)))
    doc = json.loads(d.to_json())
    assert doc["task"]["outputs"][0]["sqnr_db"] == "inf" and doc["task"]["outputs"][0]["relative_error"] == "nan"
    assert _errors(validator, doc) == []
