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
