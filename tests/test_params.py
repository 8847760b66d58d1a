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


def test_overrides_change_the_loaded_spec_and_the_recorded_run(tiny, workspace):
    from flows.spec import Curriculum

    params = StaircaseParams(curriculum=str(tiny), rounds=1, overrides={
        "template": "textbook", "temperature": 0.2, "samples": 3, "max_rows": 5,
        "student_objective": "label", "student_max_steps": 7, "teacher_model": "smollm2-135m"})
    spec = params.load()
    assert (spec.generate.template, spec.generate.max_rows) == ("textbook", 5)
    assert (spec.teacher.temperature, spec.teacher.samples) == (0.2, 3)
    assert (spec.student.objective, spec.student.max_steps, spec.staircase.rounds) == ("label",
                                                                                      7, 1)
    plain = StaircaseParams(curriculum=str(tiny)).load()
    assert plain.generate.template == "rationale" and plain.fingerprint() != spec.fingerprint()
    # The run records the spec as overridden: the catalog alone says what ran.
    run = workspace.catalog.get_run(workspace.resume_or_start(spec, "run"))
    recorded = Curriculum.model_validate_json(run.spec_json)
    assert recorded.generate.template == "textbook" and recorded.teacher.samples == 3
    assert recorded.fingerprint() == spec.fingerprint() == run.curriculum_hash


@pytest.mark.parametrize("overrides, message", [
    ({"temperature": 5}, "less than or equal to 2"),             # the spec's bound
    ({"samples": 0}, "greater than or equal to 1"),
    ({"teacher_backend": "nope"}, "'openai', 'vllm', 'llamacpp' or 'transformers'"),
    ({"colour": "red"}, "Extra inputs are not permitted"),
    # Rules across keys and the pre-flight checks run on the overridden spec.
    ({"teacher_backend": "openai"}, "backend 'openai' needs 'base_url'"),
    ({"template": "nope"}, "generate.template: "),
])
def test_bad_overrides_are_rejected_with_the_spec_message(tiny, overrides, message):
    with pytest.raises(ValidationError) as e:
        StageParams(curriculum=str(tiny), overrides=overrides)
    assert message in str(e.value)


def test_override_fields_carry_the_spec_bounds_and_help():
    from flows.params import KNOBS
    from flows.spec import Curriculum

    schema = StaircaseParams.model_json_schema()
    fields = schema["$defs"]["Overrides"]["properties"]
    assert set(fields) == set(KNOBS) and schema["$defs"]["Overrides"]["additionalProperties"] is False
    spec_schema = Curriculum.model_json_schema()
    for name, (model, key) in KNOBS.items():
        section, option = key.split(".")
        original = spec_schema["$defs"][model.__name__]["properties"][option]
        original = next((s for s in original.get("anyOf", [original]) if s != {"type": "null"}))
        [allowed] = [s for s in fields[name]["anyOf"] if s != {"type": "null"}]
        assert allowed.items() <= original.items(), name  # same type, same bounds
        assert {k: original[k] for k in ("minimum", "maximum", "enum") if k in original}.items() \
            <= allowed.items(), name
        assert fields[name]["description"].startswith(f"Override {key}")
