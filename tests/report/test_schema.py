import copy
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
