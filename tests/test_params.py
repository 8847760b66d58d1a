"""Typed flow parameters: what the Prefect form and the CLI both validate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.params import StageParams, StaircaseParams, resolve_curriculum
from flows.settings import PROJECT_ROOT

TINY = "name: tiny\ncorpus:\n  format: demo\n  demo: {rows: 10}\nstaircase:\n  rounds: 2\n"


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_valid_params_load_the_curriculum_once(tiny):
    params = StageParams(curriculum=str(tiny))
    spec = params.load()
    assert spec.name == "tiny" and params.load() is spec
    assert params.run_id is None


def test_rounds_override_applies_to_the_loaded_spec(tiny):
    assert StaircaseParams(curriculum=str(tiny)).load().staircase.rounds == 2
    assert StaircaseParams(curriculum=str(tiny), rounds=3).load().staircase.rounds == 3


def test_invalid_curriculum_is_rejected_with_the_spec_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("rounds: 2", "rounds: 2\n  steps: 1"))
    with pytest.raises(ValidationError) as e:
        StaircaseParams(curriculum=str(bad))
    assert "staircase.steps: unknown key" in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(ValidationError, match="cannot read"):
        StageParams(curriculum=str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("bad", [
    {"curriculum": "notes.txt"},                 # not a YAML file name
    {"rounds": 0},                                # below the bound
    {"rounds": 21},
    {"colour": "red"},                            # unknown key
])
def test_schema_level_errors(tiny, bad):
    with pytest.raises(ValidationError):
        StaircaseParams(**{"curriculum": str(tiny), **bad})


def test_run_id_pattern(tiny):
    assert StageParams(curriculum=str(tiny), run_id="20261123-040737-537707").run_id
    with pytest.raises(ValidationError):
        StageParams(curriculum=str(tiny), run_id="../../etc")


def test_relative_paths_fall_back_to_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_curriculum("curricula/quickstart.yaml") == (
        PROJECT_ROOT / "curricula" / "quickstart.yaml")
    (tmp_path / "curricula").mkdir()
    (tmp_path / "curricula" / "quickstart.yaml").write_text(TINY)
    # The working directory wins: that is what a CLI user typed the path against.
    assert resolve_curriculum("curricula/quickstart.yaml") == (
        tmp_path / "curricula" / "quickstart.yaml")


def test_json_schema_carries_descriptions_and_bounds():
    schema = StaircaseParams.model_json_schema()
    props = schema["properties"]
    assert schema["required"] == ["curriculum"] and schema["additionalProperties"] is False
    assert props["curriculum"]["pattern"] == r"\.ya?ml$"
    assert all(p.get("description") for p in props.values())
    assert props["rounds"]["anyOf"][0] == {"maximum": 20, "minimum": 1, "type": "integer"}
