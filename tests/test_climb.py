"""A climbing staircase (staircase.schedule), three rounds through the real stage flows: ingest
of three demo levels with their held-out rows, generate (per-round levels, replay share, samples,
temperature, rationalization with a hint) against the loopback fake OpenAI teacher, curation,
training of the tiny test student, quantization to a GGUF served by llama.cpp for scoring, the
per-level scores and the level gate, and the report.

The fake teacher solves 'sum' problems and answers 'unknown' to every other question, so the
'hard' level (lookups) is unsolved by every sample and goes to rationalization, where the fake,
shown the gold answer, reasons to it (and, for some problems, quotes the hint: those rows must
be dropped). Every round is taught by the curriculum's teacher (schedule `teacher:
curriculum`): the tiny student promoted each round answers garbage, and a round taught by it
would keep no rows. The level gate compares on the fixed 'hard' level, where the fake teacher
scores 0 like the untrained tiny student: `gate_margin: -0.5` lets a student within half a
point of it through, so the three promotions are the gate's own decisions, recorded with it.
"""

from __future__ import annotations

import json
import re

import pytest

from flows.climb import ids_digest, level_of
from flows.spec import Curriculum, SpecError, load
from tests.helpers.climb import climb_doc
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.tiny_student import save_tiny_base

HINT = re.compile(r"\(Correct answer: (\w+)\)")
FACT = re.compile(r"(\b[A-Z][a-z]+) has ([^.]*)\.")


def rationalizing(messages: list[dict]) -> str | None:
    """The fake teacher shown a hint: it reasons to the hinted answer from the passage; for an
    even answer it cites the hint instead (a rationale curation must drop)."""
    text = messages[-1]["content"]
    hint = HINT.search(text)
    if hint is None:
        return None  # the default: solve sums, 'unknown' otherwise
    answer = hint.group(1)
    if int(answer) % 2 == 0:
        return f"I was shown the correct answer, so it is {answer}.\nAnswer: {answer}"
    name, rest = FACT.search(text).groups()
    return f"The question is about {name}.\nThe text says: {name} has {rest}.\nAnswer: {answer}"


def write(tmp_path, doc) -> Curriculum:
    import yaml

    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load(path)


def climb(workspace, tmp_path, doc) -> str:
    """A staircase run of `doc` against the default fake teacher; its run id."""
    from flows.staircase import staircase

    with FakeOpenAI() as teacher:
        doc["teacher"]["base_url"] = teacher.base_url
        spec = write(tmp_path, doc)
        run_id = workspace.start_run(spec, "run").id
        staircase(spec, workspace, run_id)
    return run_id


def test_three_rounds_climb_the_schedule_through_the_real_flows(workspace, tmp_path):
    from flows.report import flat_rounds, round_report, write_report
    from flows.staircase import staircase
    from flows.train.examples import row_examples

    base = save_tiny_base(tmp_path / "tiny-base")
    with FakeOpenAI(responder=rationalizing) as teacher:
        spec = write(tmp_path, climb_doc(teacher.base_url, str(base)))
        run_id = workspace.start_run(spec, "run").id
        staircase(spec, workspace, run_id)
        # Resumed: every stage and every score is reused, nothing is measured twice.
        before = ([(s.id, s.status) for s in workspace.catalog.stages(run_id)],
                  len(workspace.catalog.metrics(run_id=run_id)))
        staircase(spec, workspace, run_id)
        assert ([(s.id, s.status) for s in workspace.catalog.stages(run_id)],
                len(workspace.catalog.metrics(run_id=run_id))) == before

    ws = workspace
    ingest = ws.latest_stage("ingest", run_id=run_id)
    corpus = ws.store.table(ws.shards(ingest, "corpus")).to_pylist()
    evals = ws.store.table(ws.shards(ingest, "eval")).to_pylist()
    level = {r["id"]: level_of(r) for r in corpus + evals}
    # Held out per level at ingest, before any teacher saw them: 3 per level.
    held = {n: sorted((r for r in evals if level_of(r) == n), key=lambda r: r["id"])
            for n in ("easy", "mid", "hard")}
    assert {n: len(rows) for n, rows in held.items()} == {"easy": 3, "mid": 3, "hard": 3}

    def generated(index):
        stage = ws.latest_stage("generate", run_id=run_id, round_index=index)
        return ws.summary(stage), ws.store.table(ws.shards(stage, "generated")).to_pylist()

    asked = {}
    for index, (levels, new, replay) in enumerate(
            [({"easy"}, 6, 0), ({"mid"}, 4, 2), ({"mid", "hard"}, 6, 2)]):
        summary, rows = generated(index)
        sources = {r["source_id"] for r in rows if r["template"] == "rationale"}
        asked[index] = sources
        assert not sources & {r["id"] for r in evals}  # no held-out problem is ever asked
        assert len(sources) == new + replay
        fresh = {s for s in sources if level[s] in levels}
        assert len(fresh) == new
        # Replayed problems are earlier rounds' problems of easier levels.
        earlier = set().union(*(asked[k] for k in range(index)))
        assert sources - fresh <= earlier and len(sources - fresh) == replay
        assert {level[s] for s in sources - fresh} <= {"easy", "mid"} - levels
        assert summary["samples"] == [2, 2, 3][index]
        assert sum(n["new"] for n in summary["source_rows_by_level"].values()) == new
        # New problems are new: none was asked in an earlier round.
        assert not fresh & earlier

    # The pairwise templates (prompts/pairwise/) gave each problem worked examples of its own
    # shape: three colors added two at a time for the mid level's three-color passages, two
    # colors for the easy level's; the students train under the same system message.
    for index, shape, other in ((0, "4 + 5 = 9.", "9 + 5 = 14."), (1, "9 + 5 = 14.", "4 + 5 = 9.")):
        fresh = [json.loads(r["messages"]) for r in generated(index)[1] if level[r["source_id"]]
                 == ("easy", "mid")[index]]
        assert fresh and all(shape in m[2]["content"] and other not in json.dumps(m)
                             for m in fresh)

    # Round 2: no sample solved a lookup, so each hard problem was asked once with its answer
    # (the mid ones, sums, were solved).
    summary, rows = generated(2)
    hinted = [r for r in rows if r["template"] == "rationalize"]
    assert summary["rationalize_requests"] == 3 and len(hinted) == 3
    assert all("(Correct answer:" in json.loads(r["messages"])[-1]["content"] for r in hinted)
    curate = ws.latest_stage("curate", run_id=run_id, round_index=2)
    cs = ws.summary(curate)
    quoted = sum(1 for r in hinted if "I was shown" in r["rationale"])
    assert 0 < quoted < 3, "the seed should give both kinds of hinted answer"
    assert cs["rationalized"] == 3 and cs["rationalized_kept"] == 3 - quoted
    assert cs["drops_by_reason"]["quotes_hint"] == quoted
    assert cs["kept_by_level"]["hard"] == 3 - quoted
    train = ws.store.table(ws.shards(curate, "train")).to_pylist()
    trained_hinted = [r for r in train if r["template"] == "rationalize"]
    assert len(trained_hinted) == 3 - quoted
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    for row in trained_hinted:
        (example,) = row_examples(row, tok, "cot", 512)
        text = tok.decode(example.input_ids)
        assert "Correct answer" not in text and row["question"] in text
        assert row["rationale"].strip() in text  # trained on the rationale, without the hint
    # Every trained row, hinted or not, is taught under the pairwise system message.
    for row in train:
        (example,) = row_examples(row, tok, "cot", 512)
        assert "add two numbers at a time" in tok.decode(example.input_ids)

    # Every round scored teacher and student on the same held-out rows of every level.
    scores = [m for m in ws.catalog.metrics(run_id=run_id) if m.name == "level_accuracy"]
    for name, rows in held.items():
        digests = {json.loads(m.meta_json)["eval_ids"] for m in scores
                   if json.loads(m.meta_json)["level"] == name}
        assert digests == {ids_digest(rows)}
    seen = {(m.round_index, json.loads(m.meta_json)["role"], json.loads(m.meta_json)["level"])
            for m in scores}
    assert seen == {(k, role, n) for k in range(3) for role in ("teacher", "student")
                    for n in held}
    teacher_levels = {json.loads(m.meta_json)["level"]: m.value for m in scores
                      if json.loads(m.meta_json)["role"] == "teacher" and m.round_index == 0}
    assert teacher_levels == {"easy": 1.0, "mid": 1.0, "hard": 0.0}  # the fake solves sums only

    rounds = ws.catalog.rounds(run_id)
    assert [r.index for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert r.gate_passed and r.promoted_model_id
        assert re.fullmatch(r"level hard: Q8_0 student \d\.\d{3} > teacher 0\.000 -0\.500",
                            r.gate_reason), r.gate_reason
        assert r.teacher == "openai:fake"

    report = round_report(ws, run_id)
    assert [r["rationalized"] for r in report] == [0, 0, 3]
    assert report[2]["level_accuracy"]["hard"]["teacher"] == 0.0
    assert set(report[1]["level_accuracy"]) == {"easy", "mid", "hard"}
    assert report[1]["rows_by_level"] == {"mid": {"new": 4, "replay": 0},
                                          "easy": {"new": 0, "replay": 2}}
    flat = flat_rounds(report)  # the Prefect table artifact's rows: same columns in every row
    assert len({tuple(row) for row in flat}) == 1
    assert flat[2]["hard teacher"] == 0.0 and flat[2]["hard new/replay/kept"].startswith("3/0/")
    assert flat[0]["hard new/replay/kept"] is None  # round 0 asked no hard problem
    paths = write_report(ws, run_id, report)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    page = paths["html"].read_text()
    assert "per level" in page and "quotes_hint=" in page and f"({3 - quoted}/3 rationalized)" in page


def test_a_failed_level_gate_retries_the_round_once_with_more_samples(workspace, tmp_path):
    """On its own level ('easy') the fake teacher scores 100%: the tiny student cannot beat it,
    so the round is run again with retry_samples before the staircase stops."""

    base = save_tiny_base(tmp_path / "tiny-base")
    doc = climb_doc("http://127.0.0.1:9/v1", str(base), rounds=1, gate_level=None,
                    gate_margin=0.0, retry_samples=3, retry_temperature=0.9)
    doc["staircase"]["schedule"] = doc["staircase"]["schedule"][:1]
    run_id = climb(workspace, tmp_path, doc)
    gens = [s for s in workspace.catalog.stages(run_id) if s.name == "generate"]
    assert [workspace.summary(s)["samples"] for s in gens] == [2, 3]
    rows = workspace.store.table(workspace.shards(gens[1], "generated")).to_pylist()
    assert {json.loads(r["sampling"])["temperature"] for r in rows} == {0.9}
    students = {json.loads(m.meta_json)["model"] for m in workspace.catalog.metrics(run_id=run_id)
                if m.name == "level_accuracy" and json.loads(m.meta_json)["role"] == "student"}
    assert len(students) == 2  # each try's candidate scored on the levels
    # Each try's files stay where the catalog says: the retry does not overwrite the first.
    from flows.settings import models_root

    q8 = [m for m in workspace.catalog.models() if m.quant == "Q8_0"]
    assert len(q8) == 2 and q8[0].path != q8[1].path
    assert all((models_root() / m.path).stat().st_size == m.bytes for m in q8)
    (rnd,) = workspace.catalog.rounds(run_id)
    assert rnd.gate_passed is False
    assert re.fullmatch(r"retried with 3 samples: level easy: Q8_0 student 0\.\d+ <= teacher "
                        r"1\.000; first try: level easy: Q8_0 student 0\.\d+ <= teacher 1\.000",
                        rnd.gate_reason), rnd.gate_reason


def test_a_schedule_is_checked_strictly(tmp_path):
    """Each mistake is one line naming the key (load() on a file, as `stairs validate` does)."""
    ok = Curriculum.model_validate(climb_doc("http://127.0.0.1:9/v1", "x"))
    assert ok.staircase.round_entry(5).levels == ["mid", "hard"]  # past the end: the last entry

    def refused(doc, why):
        with pytest.raises(SpecError, match=re.escape(why)):
            write(tmp_path, doc)

    for entry, why in [
            ({"levels": ["easy"], "rows": 4, "sample": 2},
             "staircase.schedule.0.sample: unknown key"),
            ({"levels": ["expert"], "rows": 4}, "unknown level(s) ['expert']"),
            ({"levels": ["easy"], "rows": 4, "replay": 0.5}, "round 0 has no earlier rounds"),
            ({"levels": ["easy"], "rows": 4, "rehearse": 0.5},
             "staircase.schedule[0].rehearse: round 0 has no earlier rounds"),
            ({"levels": ["easy"], "rows": 4, "rehearse": 1.5},
             "staircase.schedule.0.rehearse: Input should be less than or equal to 1"),
            ({"levels": ["easy", "mid"], "rows": 4, "weights": [1]},
             "weights [1]: one positive integer per level (2)"),
            ({"levels": ["easy", "easy"], "rows": 4}, "a level is listed twice (use weights)")]:
        d = climb_doc("http://127.0.0.1:9/v1", "x")
        d["staircase"]["schedule"] = [entry]
        refused(d, why)
    # Fewer rounds than entries (a `rounds` override in the UI or CLI): a shorter climb.
    short = write(tmp_path, climb_doc("http://127.0.0.1:9/v1", "x", rounds=2))
    assert short.staircase.rounds == 2
    assert short.staircase.round_entry(1) == short.staircase.schedule[1]
    d = climb_doc("http://127.0.0.1:9/v1", "x")
    d["corpus"]["demo"] = {"rows": 10}
    refused(d, "needs corpus format 'demo' with demo.levels")
    d = climb_doc("http://127.0.0.1:9/v1", "x")
    d["generate"] = {"max_rows": 4}
    refused(d, "generate.max_rows and staircase.schedule both choose the rows")
    refused(climb_doc("http://127.0.0.1:9/v1", "x", gate_level="expert"),
            "staircase.gate_level: unknown level 'expert'")


def test_round_sources_refuse_a_level_that_runs_out(workspace):
    from flows.climb import ScheduleError, round_sources
    from flows.ingest import ingest

    doc = climb_doc("http://127.0.0.1:9/v1", "x")
    doc["staircase"]["schedule"][2]["rows"] = 60
    spec = Curriculum.model_validate(doc)
    run_id = workspace.start_run(spec, "run").id
    ingest(spec, workspace, run_id)
    stage = workspace.latest_stage("ingest", run_id=run_id)
    rows = workspace.store.table(workspace.shards(stage, "corpus")).to_pylist()
    first, _ = round_sources(spec, rows, 0)
    again, _ = round_sources(spec, rows, 0)
    assert [r["id"] for r in first] == [r["id"] for r in again]  # a retry asks the same
    with pytest.raises(ScheduleError, match="round 2 asks for 23 new problems of level 'mid' after 4"):
        round_sources(spec, rows, 2)


def test_a_rationalizing_schedule_needs_its_template_before_the_run(tmp_path):
    import shutil

    from flows.prompting import default_prompts_dir
    from flows.prompting.check import check_generate_template

    own = tmp_path / "my_prompts"
    own.mkdir()
    shutil.copy(default_prompts_dir() / "rationale.yaml", own)
    doc = climb_doc("http://127.0.0.1:9/v1", "x")
    doc["generate"] = {"prompts_dir": str(own)}
    (problem,) = check_generate_template(write(tmp_path, doc))
    assert problem.startswith("staircase.schedule: rationalize asks with template 'rationalize'")
    shutil.copy(default_prompts_dir() / "rationalize.yaml", own)
    assert check_generate_template(write(tmp_path, doc)) == []


def test_generate_run_alone_asks_a_scheduled_rounds_problems_as_scheduled(workspace, tmp_path):
    """`stairs generate --round 1` of a scheduled curriculum: round 1's problems (mid, plus a
    replayed share of round 0's easy ones) with round 1's samples, nothing of round 0 missed."""
    from flows.generate import generate

    with FakeOpenAI() as teacher:
        spec = write(tmp_path, climb_doc(teacher.base_url, "x"))
        run_id = workspace.start_run(spec, "run").id
        result = generate(spec, workspace, run_id, round_index=1, progress_bar=False)
        assert result.samples == 2 and result.requests == 6 * 2
        assert result.source_rows_by_level == {"mid": {"new": 4, "replay": 0},
                                               "easy": {"new": 0, "replay": 2}}
        assert result.rationalize_requests == 0  # round 1 does not rationalize


def test_a_round_taught_by_the_promoted_student_gets_its_scores_as_its_teachers(workspace,
                                                                               tmp_path):
    """Round 1 of a schedule whose teacher is the promoted one: the tiny student's Q8_0 file,
    served by llama.cpp. Its per-level scores as round 0's student are round 1's teacher scores
    (logged once, not measured again). The tiny model answers garbage, so whatever round 1
    keeps, its outcome is recorded on the round."""

    base = save_tiny_base(tmp_path / "tiny-base")
    doc = climb_doc("http://127.0.0.1:9/v1", str(base), rounds=2, gate="threshold",
                    min_accuracy=0.0, gate_level=None, gate_margin=0.0)
    doc["staircase"]["schedule"] = doc["staircase"]["schedule"][:2]
    del doc["staircase"]["schedule"][1]["teacher"]  # the default: the promoted student
    doc["teacher"]["max_tokens"] = 16
    run_id = climb(workspace, tmp_path, doc)
    first, second = workspace.catalog.rounds(run_id)
    assert first.gate_passed and second.teacher == f"llamacpp:catalog:{first.promoted_model_id}"
    assert second.teacher_model_id == first.promoted_model_id and second.gate_reason
    gen = workspace.latest_stage("generate", run_id=run_id, round_index=1)
    assert workspace.summary(gen)["teacher"].startswith("llamacpp")
    scores = [(m.round_index, json.loads(m.meta_json), m.value)
              for m in workspace.catalog.metrics(run_id=run_id) if m.name == "level_accuracy"]
    as_student = {meta["level"]: v for r, meta, v in scores if r == 0 and meta["role"] == "student"}
    as_teacher = {meta["level"]: v for r, meta, v in scores if r == 1 and meta["role"] == "teacher"}
    assert as_teacher == as_student and len(as_teacher) == 3
    assert {meta["measured_in_round"] for r, meta, _ in scores
            if r == 1 and meta["role"] == "teacher"} == {0}


def test_weights_the_worked_answer_check_and_the_per_question_cap_through_the_flows(
        workspace, tmp_path):
    """Round 0 of a schedule with `weights`, two `rationalize_samples`, `max_rows_per_question: 1`
    and the default `worked_answer: rationalized`, through ingest -> generate -> curate -> train
    against a fake teacher that misses every sum divisible by 3 and words its samples three ways.
    Shown the answer, it works an odd one out and only states an even one: those rows must go
    (answer_not_worked), and each problem keeps at most one row, its own sample first."""
    from flows.climb import level_of
    from flows.curate import curate
    from flows.generate import generate
    from flows.ingest import ingest
    from flows.train import train
    from tests.helpers.openai_server import solve

    asked: dict[str, int] = {}

    def teacher(messages):
        text = messages[-1]["content"]
        hint = HINT.search(text)
        name, rest = FACT.search(text.split("Question:")[0]).groups()
        numbers = [int(n) for n in re.findall(r"\d+", rest)]
        if hint is not None:
            answer = hint.group(1)
            if int(answer) % 2 == 0:
                return f"{name} has {answer} things in total.\nAnswer: {answer}"
            return (f"{name} has {rest}. {' + '.join(map(str, numbers))} = {answer}.\n"
                    f"Answer: {answer}")
        solved = solve(text)
        answer = int(solved.rsplit("Answer: ", 1)[1])
        if answer % 3 == 0:
            return "I cannot tell.\nAnswer: unknown"
        n = asked[text] = asked.get(text, -1) + 1  # the n-th sample of this problem
        return [solved,
                f"Counting what {name} owns, one color after another, the total comes to "
                f"{' + '.join(map(str, numbers))} = {answer}.\nAnswer: {answer}",
                f"We only need {name}'s numbers here and nobody else's; summing "
                f"{' + '.join(map(str, numbers))} = {answer} gives it.\nAnswer: {answer}"][n % 3]

    base = save_tiny_base(tmp_path / "tiny-base")
    with FakeOpenAI(responder=teacher) as fake:
        doc = climb_doc(fake.base_url, str(base), rounds=1)
        doc["staircase"]["schedule"] = [
            {"levels": ["easy", "mid"], "weights": [1, 3], "rows": 12, "samples": 3,
             "temperature": 0.7, "rationalize": True, "rationalize_samples": 2}]
        doc["curation"] = {"max_rows_per_question": 1, "near_dedup": {"enabled": False}}
        spec = write(tmp_path, doc)
        ws = workspace
        run_id = ws.start_run(spec, "run").id
        ingest(spec, ws, run_id)
        g = generate(spec, ws, run_id, progress_bar=False)
        c = curate(spec, ws, run_id)
        t = train(spec, ws, run_id)

    corpus = ws.store.table(ws.shards(ws.latest_stage("ingest", run_id=run_id), "corpus"))
    level = {r["id"]: level_of(r) for r in corpus.to_pylist()}
    stage = ws.latest_stage("generate", run_id=run_id)
    assert ws.summary(stage)["source_rows_by_level"] == {"easy": {"new": 3, "replay": 0},
                                                         "mid": {"new": 9, "replay": 0}}
    cur = ws.latest_stage("curate", run_id=run_id)
    rows = [r for kind in ("kept", "dropped")
            for r in ws.store.table(ws.shards(cur, kind)).to_pylist()]
    hinted = [r for r in rows if r["template"] == "rationalize"]
    stated = [r for r in hinted if "=" not in r["rationale"]
              and r["answer"] not in re.findall(r"\d+", r["passage"])]
    assert g.rationalize_requests == len(hinted) == 2 * len({r["source_id"] for r in hinted})
    assert stated
    assert c.drops_by_reason["answer_not_worked"] == len(stated)
    assert all(r["drop_reason"] == "answer_not_worked" for r in stated)
    # One kept row per solved problem; extra samples lost to the cap, the teacher's own first.
    kept = [r for r in rows if r["keep"]]
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source_id"], []).append(r)
    assert len({r["source_id"] for r in kept}) == len(kept)
    extra = [r for r in rows if r["drop_reason"] == "extra_sample"]
    assert c.drops_by_reason["extra_sample"] == len(extra) > 0
    for r in extra:
        (winner,) = [k for k in by_source[r["source_id"]] if k["keep"]]
        assert winner["template"] == "rationale"
    assert {level[r["source_id"]] for r in kept} == {"easy", "mid"}
    assert t.rows == len(kept) == c.kept


def test_students_can_start_from_the_last_promoted_student(workspace, tmp_path):
    """staircase.student_from: promoted: round 1's student is trained from round 0's student
    (its float weights, recorded as its parent), not from student.base again."""

    base = save_tiny_base(tmp_path / "tiny-base")
    doc = climb_doc("http://127.0.0.1:9/v1", str(base), rounds=2, gate="threshold",
                    min_accuracy=0.0, gate_level=None, gate_margin=0.0,
                    student_from="promoted")
    doc["staircase"]["schedule"] = doc["staircase"]["schedule"][:2]
    run_id = climb(workspace, tmp_path, doc)
    first, second = workspace.catalog.rounds(run_id)
    assert first.gate_passed and second.student_model_id
    models = {m.id: m for m in workspace.catalog.models()}
    assert models[second.student_model_id].parent_id == first.student_model_id
    # Round 0's student came from the base, as without the key.
    assert models[models[first.student_model_id].parent_id].kind != "student"


def test_a_round_rehearses_a_seeded_share_of_the_rows_earlier_rounds_kept(workspace, tmp_path):
    """schedule[1].rehearse: 0.5: round 1's student trains on round 1's kept rows plus half of
    round 0's (drawn with student.seed), records them as what it was trained on, and nothing
    is asked of the teacher again for them."""
    from flows.train.rehearsal import rehearsed_rows

    base = save_tiny_base(tmp_path / "tiny-base")
    doc = climb_doc("http://127.0.0.1:9/v1", str(base), rounds=2, gate="threshold",
                    min_accuracy=0.0, gate_level=None, gate_margin=0.0)
    doc["staircase"]["schedule"] = doc["staircase"]["schedule"][:2]
    doc["staircase"]["schedule"][1]["rehearse"] = 0.5
    run_id = climb(workspace, tmp_path, doc)
    ws = workspace
    kept = {k: ws.stage_shards(run_id, "curate", "train", round_index=k) for k in (0, 1)}
    rows = {k: ws.store.table(shards).to_pylist() for k, shards in kept.items()}
    trained = [ws.summary(ws.latest_stage("train", run_id=run_id, round_index=k)) for k in (0, 1)]
    assert trained[0]["rehearsed_rows"] == 0 and trained[0]["rows"] == len(rows[0])
    half = rehearsed_rows(rows[0], 0.5, 0)
    assert 0 < len(half) == round(len(rows[0]) / 2) < len(rows[0])
    assert trained[1]["rehearsed_rows"] == len(half)
    assert trained[1]["rows"] == len(rows[1]) + len(half)
    # Every row became examples (as many per row as in round 0): the round-0 rows were
    # trained, not only counted.
    per_row = trained[0]["examples"] // trained[0]["rows"]
    assert trained[1]["examples"] == per_row * trained[1]["rows"] and not trained[1]["skipped"]
    student = ws.catalog.rounds(run_id)[1].student_model_id
    assert ({s.id for s in ws.catalog.model_training_shards(student)}
            == {s.id for s in kept[0] + kept[1]})
    # Nothing was asked for them: round 1 asked about its scheduled 6 problems only.
    asked = ws.store.table(ws.shards(ws.latest_stage("generate", run_id=run_id, round_index=1),
                                     "generated")).to_pylist()
    assert len({r["source_id"] for r in asked}) == doc["staircase"]["schedule"][1]["rows"]
    from flows.report import round_report, write_report

    report = round_report(ws, run_id)
    assert [r["rows_rehearsed"] for r in report] == [0, len(half)]
    page = write_report(ws, run_id, report)["html"].read_text()
    assert f"(+{len(half)} rehearsed)" in page


def test_sum_errors_sorts_a_students_misses_by_what_went_wrong():
    from bench.sum_errors import classify

    row = {"passage": "Mira has 3 green pens, 6 black pens and 5 white pens. Dano has 7 green "
                      "pens, 2 black pens and 4 white pens.",
           "question": "How many pens does Mira have in total?"}

    def kind(output, correct=False):
        return classify(row, {"output": output, "correct": correct})

    assert kind("3 + 6 = 9.\n9 + 5 = 14.\nAnswer: 14", correct=True) == "right"
    assert kind("3 + 6 + 5 = 15.\nAnswer: 15") == "right operands, wrong total"
    assert kind("3 + 6 = 9.\n9 + 5 = 15.\nAnswer: 15") == "right operands, wrong total"
    assert kind("3 + 6 = 9.\n9 + 4 = 13.\nAnswer: 13") == "wrong operands"  # Dano's white pens
    assert kind("3 + 6 + 5 = 14.\nAnswer: 9") == "right operands, other answer"
    assert kind("Mira has many pens.\nAnswer: 12") == "no step"
