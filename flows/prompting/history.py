"""`stairs prompts history TEMPLATE`: which versions of a prompt template made which data and
which students, read from the catalog alone.

Generate stages record the template's name and content hash (their params, and every generated
row); the curate and train stages of the same run and round record what curation kept and the
trained student's held-out accuracy. Generate also stores each version's text by hash
(TemplateText), so an older version can be shown or restored after the file was edited.
"""

from __future__ import annotations

import json
from statistics import mean

from storage.catalog import Catalog


def _latest(catalog: Catalog) -> dict[tuple[str, int | None, str], object]:
    """The newest completed generate/curate/train stage of every (run, round): the ones a round's
    later stages read (a resumed round may hold older attempts)."""
    latest = {}
    for st in catalog.stages_named("generate", "curate", "train"):
        latest[(st.run_id, st.round_index, st.name)] = st  # oldest first: the newest wins
    return latest


def template_history(catalog: Catalog, name: str) -> list[dict]:
    """One entry per content hash of template `name` that a generate stage used, oldest first:
    when it was first used, in which runs, how much curation kept, and the held-out accuracy of
    the students trained on that data."""
    latest = _latest(catalog)
    versions: dict[str, dict] = {}
    counted_curations: set[int] = set()
    counted_students: set[int] = set()
    for (run_id, rnd, stage_name), gen in latest.items():
        params = json.loads(gen.params_json or "{}")
        if stage_name != "generate" or params.get("template") != name:
            continue
        v = versions.setdefault(params["template_hash"], {
            "content_hash": params["template_hash"], "first_seen": gen.started_at, "runs": [],
            "uses": [], "generated": 0, "kept": 0, "students": []})
        v["first_seen"] = min(v["first_seen"], gen.started_at)
        if run_id not in v["runs"]:
            v["runs"].append(run_id)
        use = {"run": run_id, "round": rnd, "teacher": params.get("teacher"), "generated": None,
               "kept": None, "student_accuracy": None}
        cur = latest.get((run_id, rnd, "curate"))
        if cur is not None and cur.id > gen.id:  # curated these rows, not an older attempt's
            summary = json.loads(cur.summary_json or "{}")
            use.update(generated=summary.get("generated"), kept=summary.get("kept"))
            origin = cur.reused_from_id or cur.id  # a reused curation is one set of rows
            if origin not in counted_curations:
                counted_curations.add(origin)
                v["generated"] += summary.get("generated") or 0
                v["kept"] += summary.get("kept") or 0
            trained = latest.get((run_id, rnd, "train"))
            if trained is not None and trained.id > cur.id:
                summary = json.loads(trained.summary_json or "{}")
                acc, student = summary.get("student_accuracy"), summary.get("student_model_id")
                use["student_accuracy"] = acc
                if acc is not None and student not in counted_students:
                    counted_students.add(student)
                    v["students"].append({"model_id": student, "run": run_id, "round": rnd,
                                          "accuracy": acc, "eval_rows": summary.get("eval_rows")})
        v["uses"].append(use)
    out = sorted(versions.values(), key=lambda v: v["first_seen"])
    stored = {t.content_hash for v in out for t in catalog.template_texts(v["content_hash"])}
    for v in out:
        v["kept_rate"] = round(v["kept"] / v["generated"], 4) if v["generated"] else None
        accs = [s["accuracy"] for s in v["students"]]
        v["student_accuracy"] = round(mean(accs), 4) if accs else None
        v["text_stored"] = v["content_hash"] in stored
        v["first_seen"] = v["first_seen"].isoformat()
    return out


def template_text(catalog: Catalog, hash_prefix: str) -> tuple[str, str, str]:
    """(name, content hash, text) of the stored version whose hash starts with the prefix;
    KeyError when none or several match."""
    found = catalog.template_texts(hash_prefix.lower())
    if len(found) != 1:
        why = "no stored template version" if not found else f"{len(found)} versions"
        raise KeyError(f"{why} with a hash starting {hash_prefix!r}")
    t = found[0]
    return t.name, t.content_hash, t.text
