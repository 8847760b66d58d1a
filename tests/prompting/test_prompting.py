"""The prompt engine: loading and checking template files, sandboxed strict rendering, parsers."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

from flows.answers import answers_match, extract_answer
from flows.ingest.demo import generate
from flows.prompting import TemplateError, list_templates, load_template

ROW = {"id": "row-1", "passage": "Vorla has 3 red kites and 4 blue kites.",
       "question": "How many kites does Vorla have in total?", "answer": "seven-ZZ",
       "meta": '{"task": "sum"}'}


def write(tmp_path, name, body):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def simple(user="Q: {{ question }}", needs="[question]", extra=""):
    return f"""\
        description: test
        needs: {needs}
        output: rationale
        {extra}
        messages:
          - role: user
            content: "{user}"
        """


# -- shipped templates ---------------------------------------------------------------------------
def test_shipped_templates_load_and_describe_themselves():
    names = list_templates()
    assert {"rationale", "disentangle", "textbook", "judge"} <= set(names)
    for name in names:
        t = load_template(name)
        assert t.name == name and t.description and t.needs
        assert t.content_hash == hashlib.sha256(t.path.read_bytes()).hexdigest()
        # Each file opens with a comment saying what it is for.
        assert t.path.read_text().startswith(f"# {name}:")


def test_rationale_renders_real_demo_rows_without_the_gold_answer():
    t = load_template("rationale")
    assert "answer" not in t.needs + t.optional
    row = dict(ROW)
    messages = t.render(row)
    assert [m["role"] for m in messages][-1] == "user"
    text = "\n".join(m["content"] for m in messages)
    assert row["passage"] in text and row["question"] in text
    assert "seven-ZZ" not in text
    for demo_row in generate(5, tasks=["sum", "lookup"]):
        demo_row["id"] = "d"
        assert demo_row["question"] in t.render(demo_row)[-1]["content"]


def test_judge_and_disentangle_render():
    judge = load_template("judge")
    msgs = judge.render({**ROW, "rationale": "3 + 4 = 7.", "answer": "7"})
    assert "3 + 4 = 7." in msgs[-1]["content"]
    assert judge.json_schema["required"] == ["reason", "score"]
    dis = load_template("disentangle")
    assert ROW["passage"] in dis.render({"id": "x", "passage": ROW["passage"]})[-1]["content"]


# -- load-time errors ----------------------------------------------------------------------------
def test_unknown_template_names_the_file_and_known_ones(tmp_path):
    write(tmp_path, "mine", simple())
    with pytest.raises(TemplateError, match=r"nope\.yaml: no template 'nope' \(known: mine\)"):
        load_template("nope", tmp_path)


def test_unknown_key_is_an_error(tmp_path):
    write(tmp_path, "t", simple(extra="temperature: 0.3"))
    with pytest.raises(TemplateError, match=r"t\.yaml: temperature: unknown key"):
        load_template("t", tmp_path)


def test_unknown_parser_is_an_error(tmp_path):
    write(tmp_path, "t", simple().replace("output: rationale", "output: poem"))
    with pytest.raises(TemplateError, match=r"t\.yaml: output: .*unknown parser 'poem'"):
        load_template("t", tmp_path)


def test_syntax_error_names_file_message_and_line(tmp_path):
    write(tmp_path, "t", simple(user="Q: {{ question "))
    with pytest.raises(TemplateError, match=r"t\.yaml: messages\[0\] \(user\): Jinja syntax error"):
        load_template("t", tmp_path)


def test_undeclared_variable_fails_at_load(tmp_path):
    write(tmp_path, "t", simple(user="Q: {{ question }} {{ answr }}"))
    with pytest.raises(TemplateError, match=r"t\.yaml: .*uses answr which is not in 'needs'"):
        load_template("t", tmp_path)


def test_last_message_must_be_user(tmp_path):
    write(tmp_path, "t", simple().replace("role: user", "role: assistant"))
    with pytest.raises(TemplateError, match="last message must have role 'user'"):
        load_template("t", tmp_path)


def test_bad_yaml_and_bad_name(tmp_path):
    (tmp_path / "t.yaml").write_text("description: [unclosed\n")
    with pytest.raises(TemplateError, match=r"t\.yaml: not valid YAML"):
        load_template("t", tmp_path)
    with pytest.raises(TemplateError, match="bad template name"):
        load_template("../etc/passwd", tmp_path)


# -- render-time errors ----------------------------------------------------------------------------
def test_missing_needed_field_names_template_row_and_field(tmp_path):
    write(tmp_path, "t", simple())
    t = load_template("t", tmp_path)
    with pytest.raises(TemplateError, match=r"t\.yaml: row r9: field 'question' is missing"):
        t.render({"id": "r9", "passage": "p"})
    with pytest.raises(TemplateError, match=r"row r9: field 'question' is empty"):
        t.render({"id": "r9", "question": "  "})


def test_strict_undefined_attribute_names_row(tmp_path):
    write(tmp_path, "t", simple(user="{{ meta.difficulty }}", needs="[meta]"))
    t = load_template("t", tmp_path)
    assert t.render({"id": "a", "meta": '{"difficulty": 3}'})[0]["content"] == "3"
    with pytest.raises(TemplateError, match=r"row b: messages\[0\] \(user\): undefined: .*difficulty"):
        t.render({"id": "b", "meta": '{"task": "sum"}'})


def test_optional_field_is_none_when_absent(tmp_path):
    write(tmp_path, "t", simple(user="{{ question }}{% if hint %} (hint: {{ hint }}){% endif %}",
                                extra="optional: [hint]"))
    t = load_template("t", tmp_path)
    assert t.render({"id": "a", "question": "Q"})[0]["content"] == "Q"
    assert t.render({"id": "a", "question": "Q", "hint": "add"})[0]["content"] == "Q (hint: add)"


@pytest.mark.parametrize("expr", [
    "{{ question.__class__.__mro__ }}",
    "{{ question.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ question.format_map.__self__ }}",
    "{{ '{0.__class__}'.format(question) }}",
])
def test_sandbox_refuses_python_internals(tmp_path, expr):
    write(tmp_path, "t", simple(user=expr.replace('"', "'"),
                                extra="optional: [cycler, lipsum]"))
    t = load_template("t", tmp_path)
    with pytest.raises(TemplateError, match=r"t\.yaml: row r1: messages\[0\] \(user\): "
                                            r"(refused by the sandbox|undefined)"):
        t.render({"id": "r1", "question": "Q", "cycler": "c", "lipsum": "l"})


def test_sandbox_is_immutable(tmp_path):
    write(tmp_path, "t", simple(user="{{ tags.append(1) }}", needs="[tags]"))
    t = load_template("t", tmp_path)
    tags: list = []
    with pytest.raises(TemplateError, match="refused by the sandbox"):
        t.render({"id": "r1", "tags": tags})
    assert tags == []


def test_jinja_globals_are_not_reachable(tmp_path):
    # Jinja's own globals (range, cycler, lipsum...) are not row fields, so using one is undeclared.
    write(tmp_path, "t", simple(user="{{ cycler.__init__.__globals__ }}"))
    with pytest.raises(TemplateError, match="uses cycler which is not in 'needs'"):
        load_template("t", tmp_path)


LOOPS = "{% for a in question %}" * 4 + "{% endfor %}" * 4


@pytest.mark.parametrize("expr,why", [
    ("{{ question * 10000000000 }}", "repeating 3000 items 10000000000 times is over 1,000,000"),
    ("{{ 'x' * 10**10 }}", "repeating 1 items 10000000000 times"),  # was folded at load: OOM
    ("{{ 7 ** 10000000 }}", "7 ** 10000000 is too large a number"),
    ("{{ '%999999999s' % question }}", "'%' formatting with a width over 1,000,000"),
    ("{{ '{:>999999999}'.format(question) }}", "format() with a width over 1,000,000"),
    ("{{ question|center(1000000000) }}", "filter center with 1000000000"),
    ("{% for a in question %}{{ question }}{% endfor %}", "over 1,000,000 characters"),
    (LOOPS, "rendering took over 2 s"),
])
def test_rendering_is_bounded_in_size_and_time(tmp_path, expr, why):
    import time

    write(tmp_path, "t", simple(user=expr))
    started = time.monotonic()
    t = load_template("t", tmp_path)
    with pytest.raises(TemplateError) as e:
        t.render({"id": "r1", "question": "x" * 3000})
    assert time.monotonic() - started < 10
    assert str(e.value).startswith(f"{tmp_path / 't.yaml'}: row r1: messages[0] (user): ")
    assert why in str(e.value)


# -- parsers -------------------------------------------------------------------------------------
def parse(name, text, finish=None):
    return load_template(name).parse(text, finish)


def test_rationale_parser_good():
    [it] = parse("rationale", "Vorla has 3 and 4.\n3 + 4 = 7.\nAnswer: 7\n")
    assert it == {"facts": None, "question": None, "rationale": "Vorla has 3 and 4.\n3 + 4 = 7.",
                  "answer": "7", "error": None}
    assert answers_match(it["answer"], "7")


def test_rationale_parser_keeps_first_answer_and_drops_rambling_tail():
    text = "3 + 4 = 7.\nAnswer: 7\n\nQuestion: How many does Bob have?\nAnswer: 12"
    [it] = parse("rationale", text)
    assert it["answer"] == "7" and it["rationale"] == "3 + 4 = 7." and it["error"] is None


def test_rationale_parser_bad_outputs():
    assert parse("rationale", "")[0]["error"] == "empty"
    assert parse("rationale", "   \n")[0]["error"] == "empty"
    assert parse("rationale", None)[0]["error"] == "empty"
    assert parse("rationale", "She has seven kites.")[0]["error"] == "no_answer"
    assert parse("rationale", "I'm sorry, I can't help with that.")[0]["error"] == "refused"
    cut = parse("rationale", "First, 3 + 4 is", "length")[0]
    assert cut["error"] == "truncated" and cut["answer"] is None
    # The answer line itself may be cut off when the reply hit max_tokens right there.
    assert parse("rationale", "3 + 9 = 12.\nAnswer: 1", "length")[0]["error"] == "truncated"
    assert parse("rationale", "Answer: 12\nMore", "length")[0]["error"] is None
    # "Answer:" with nothing after it is no answer.
    assert parse("rationale", "Steps.\nAnswer:\n")[0]["error"] == "no_answer"


def test_rationale_parser_agrees_with_extract_answer_on_single_answers():
    for text in ["So the total is 7.\nFinal answer: 7", "Answer: **Vorla**", "answer = 12"]:
        [it] = parse("rationale", text)
        assert answers_match(it["answer"], extract_answer(text))


DISENTANGLE_TEXT = """Facts:
- Vorla has 3 red kites.
- Vorla has 4 blue kites.

Question 1: How many kites does Vorla have?
Reasoning: 3 red plus 4 blue is 7.
Answer: 7

Question 2: How many more blue kites than red?
Reasoning: 4 - 3 = 1.
Answer: 1
"""


def test_disentangle_parser_text():
    items = parse("disentangle", DISENTANGLE_TEXT)
    assert len(items) == 2
    assert items[0]["facts"] == "- Vorla has 3 red kites.\n- Vorla has 4 blue kites."
    assert items[0]["question"] == "How many kites does Vorla have?"
    assert items[0]["rationale"] == "3 red plus 4 blue is 7."
    assert [i["answer"] for i in items] == ["7", "1"]
    assert all(i["error"] is None for i in items)


def test_disentangle_parser_json():
    text = ('```json\n{"facts": ["Vorla has 3 red kites."], "questions": ['
            '{"question": "Q1?", "rationale": "r1", "answer": "3"},'
            '{"question": "Q2?", "rationale": "r2", "answer": null}]}\n```')
    a, b = parse("disentangle", text)
    assert a == {"facts": "- Vorla has 3 red kites.", "question": "Q1?", "rationale": "r1",
                 "answer": "3", "error": None}
    assert b["error"] == "no_answer"


def test_disentangle_parser_bad_outputs():
    assert parse("disentangle", "")[0]["error"] == "empty"
    assert parse("disentangle", "Here are some thoughts.")[0]["error"] == "parse_error"
    assert parse("disentangle", '{"facts": []}')[0]["error"] == "parse_error"
    assert parse("disentangle", "I cannot do that.")[0]["error"] == "refused"
    cut = parse("disentangle", DISENTANGLE_TEXT.rsplit("Answer: 1", 1)[0], "length")
    assert [i["error"] for i in cut] == [None, "truncated"]
    noans = parse("disentangle", "Facts:\n- a\nQuestion: Why?\nReasoning: because")
    assert noans[0]["error"] == "no_answer" and noans[0]["rationale"] == "because"


def test_textbook_parser():
    [it] = parse("textbook", "  Lesson: Vorla has 7 kites.  ")
    assert it["rationale"] == "Lesson: Vorla has 7 kites." and it["error"] is None
    assert parse("textbook", "")[0]["error"] == "empty"
    assert parse("textbook", "Sorry, I can't rewrite this.")[0]["error"] == "refused"
    assert parse("textbook", "Vorla has", "length")[0]["error"] == "truncated"


def test_judge_parser():
    [it] = parse("judge", "Reason: every step follows.\nScore: 5")
    assert (it["answer"], it["rationale"], it["error"]) == ("5", "every step follows.", None)
    assert parse("judge", "Score: 4/5\nReason: small slip")[0]["answer"] == "4"
    assert parse("judge", '{"reason": "ok", "score": 3}')[0]["answer"] == "3"
    assert parse("judge", "Reason: wrong sum.\nScore: 9")[0]["error"] == "parse_error"
    assert parse("judge", "Score: 2.5")[0]["error"] == "parse_error"
    assert parse("judge", "Looks fine to me.")[0]["error"] == "no_answer"
    assert parse("judge", "")[0]["error"] == "empty"
