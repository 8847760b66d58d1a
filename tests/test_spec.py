"""The curriculum spec: valid files load; each kind of invalid file fails naming the key path."""

from pathlib import Path

import pytest
import yaml

from flows.spec import SpecError, load

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, data: dict | str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def minimal(**over) -> dict:
    data = {"name": "t", "corpus": {"format": "demo", "demo": {"rows": 10}}}
    data.update(over)
    return data


@pytest.mark.parametrize("path", sorted((ROOT / "curricula").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_curricula_are_valid(path):
    spec = load(path)
    assert spec.name
    assert path.read_text().lstrip().startswith("#"), "curricula open with a header comment"


def test_minimal_defaults(tmp_path):
    spec = load(write(tmp_path, minimal()))
    assert spec.corpus.eval_fraction == 0.2
    assert spec.teacher.backend == "llamacpp"
    assert spec.staircase.rounds >= 1


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(SpecError, match=r"corpus\.demo\.rowz: unknown key"):
        load(write(tmp_path, minimal(corpus={"format": "demo", "demo": {"rowz": 3}})))


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(SpecError, match=r"stairs: unknown key"):
        load(write(tmp_path, minimal(stairs={"rounds": 2})))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(SpecError, match=r"corpus\.eval_fraction: .*number"):
        load(write(tmp_path, minimal(corpus={"format": "demo", "eval_fraction": "lots"})))


def test_out_of_range(tmp_path):
    with pytest.raises(SpecError, match=r"staircase\.rounds"):
        load(write(tmp_path, minimal(staircase={"rounds": 0})))


def test_missing_required(tmp_path):
    with pytest.raises(SpecError, match=r"corpus: Field required"):
        load(write(tmp_path, {"name": "t"}))


def test_missing_corpus_file_is_named(tmp_path):
    from flows.preflight import load_checked

    path = write(tmp_path, {"name": "t", "corpus": {"path": "nope.jsonl"}})
    load(path)  # parsing alone does not look at the world
    with pytest.raises(SpecError, match=r"corpus\.path: file not found: .*nope\.jsonl"):
        load_checked(path)


def test_path_is_relative_to_the_curriculum(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.jsonl").write_text(
        '{"passage": "x has 2", "question": "how many?", "answer": "2"}\n')
    spec = load(write(tmp_path, {"name": "t", "corpus": {"path": "data/c.jsonl"}}))
    assert spec.resolve(spec.corpus.path) == tmp_path / "data" / "c.jsonl"


def test_format_needs_path(tmp_path):
    with pytest.raises(SpecError, match=r"corpus: .*needs 'path'"):
        load(write(tmp_path, {"name": "t", "corpus": {"format": "csv"}}))


def test_not_yaml_or_not_a_mapping(tmp_path):
    with pytest.raises(SpecError, match="not valid YAML"):
        load(write(tmp_path, "name: [unclosed"))
    with pytest.raises(SpecError, match="expected a mapping"):
        load(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(SpecError, match="cannot read"):
        load(tmp_path / "missing.yaml")


def test_fingerprint_tracks_sections(tmp_path):
    a = load(write(tmp_path, minimal(), "a.yaml"))
    b = load(write(tmp_path, minimal(staircase={"rounds": 3}), "b.yaml"))
    assert a.fingerprint("corpus") == b.fingerprint("corpus")
    assert a.fingerprint() != b.fingerprint()


# -- issue 19, findings 8 and 9: endpoints, secrets, encodings ----------------------------------
SECRET = "sk-live-" + "7c1e" * 8


@pytest.mark.parametrize("url,why", [
    ("not a url", "not an http(s) URL with a host"),
    ("ftp://models.example.com/v1", "not an http(s) URL with a host"),
    ("http://host:port/v1", "not a URL"),
    (f"https://user:{SECRET}@api.example.com/v1", "carries credentials"),
    (f"https://api.example.com/v1?api_key={SECRET}", "carries a query string"),
])
def test_a_base_url_that_cannot_be_an_endpoint_is_refused_without_echoing_a_key(tmp_path, url,
                                                                                why):
    path = write(tmp_path, minimal(teacher={"backend": "openai", "base_url": url}))
    with pytest.raises(SpecError) as e:
        load(path)
    message = str(e.value)
    assert "teacher.base_url" in message and why in message
    assert SECRET not in message
    if "credentials" in why or "query" in why:
        assert "teacher.api_key_env" in message


def test_a_url_is_stored_redacted_even_when_built_past_validation(tmp_path):
    spec = load(write(tmp_path, minimal(teacher={"backend": "openai",
                                                  "base_url": "http://127.0.0.1:9/v1"})))
    spec.teacher = spec.teacher.model_copy(
        update={"base_url": f"http://me:{SECRET}@10.0.0.5:8000/v1?key={SECRET}"})
    stored = spec.spec_json()
    assert SECRET not in stored
    assert '"base_url": "http://***@10.0.0.5:8000/v1?***"' in stored


def test_a_curriculum_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\ncorpus: {format: demo}\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1.yaml: not UTF-8 text \(byte 9 is 0xe9\)"):
        load(path)


def test_kd_without_a_teacher_distribution_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"student\.objective: 'kd' needs .*student\.kd_teacher"
                                        r".*teacher\.top_logprobs"):
        load(write(tmp_path, minimal(student={"objective": "kd"})))
    load(write(tmp_path, minimal(student={"objective": "kd"}, teacher={"top_logprobs": 5})))


def test_promote_must_be_an_artifact_the_curriculum_makes(tmp_path):
    with pytest.raises(SpecError, match=r"staircase\.promote: 'Q6_K' is not made .*F16, Q8_0"):
        load(write(tmp_path, minimal(quantization={"gguf_types": ["Q8_0"], "int8_absmax": None,
                                                   "int4_group_size": None},
                                     staircase={"promote": "Q6_K"})))
    spec = load(write(tmp_path, minimal(staircase={"promote": "int4-g32-sym"})))
    assert "int4-g32-sym" in spec.quantization.artifact_quants()


def test_a_gate_without_a_bar_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"staircase: .*threshold' needs min_accuracy"):
        load(write(tmp_path, minimal(staircase={"gate": "threshold"})))
    with pytest.raises(SpecError, match=r"staircase: .*score_teacher: false .*min_accuracy"):
        load(write(tmp_path, minimal(staircase={"score_teacher": False})))
    load(write(tmp_path, minimal(staircase={"score_teacher": False, "min_accuracy": 0.5})))
    with pytest.raises(SpecError, match=r"max_kl: .*int8-absmax-channel' is not one"):
        load(write(tmp_path, minimal(staircase={"promote": "int8-absmax-channel",
                                                "max_kl": 0.1})))
