"""A tiny curriculum across rounds (staircase.schedule): three demo levels, a three-round
schedule and the tiny sizes the climb tests run at (tests/test_climb.py)."""

from __future__ import annotations


def climb_doc(base_url: str, base: str, **staircase) -> dict:
    from flows.prompting import default_prompts_dir

    return {
        "name": "tiny-climb",
        "corpus": {"format": "demo", "eval_fraction": 0.25, "eval_max_rows": 3, "demo": {
            "seed": 3, "levels": {
                "easy": {"rows": 24, "people": 1, "colors": 2, "tasks": ["sum"]},
                "mid": {"rows": 24, "people": 2, "colors": 3, "tasks": ["sum"]},
                "hard": {"rows": 24, "people": 2, "colors": 2, "max_count": 19,
                         "tasks": ["lookup"]}}}},
        "teacher": {"backend": "openai", "model": "fake", "base_url": base_url,
                    "temperature": 0.0, "max_tokens": 64},
        # The shipped climb's templates (curricula/climb.yaml): worked examples shaped like the
        # question, sums added two at a time.
        "generate": {"prompts_dir": str(default_prompts_dir() / "pairwise")},
        "student": {"base": base, "max_steps": 2, "batch_size": 2, "eval_rows": 2,
                    "eval_max_new_tokens": 4, "evaluate_base": False},
        "quantization": {"gguf_types": ["Q8_0"], "int8_absmax": None, "int4_group_size": None,
                         "eval_rows": 3, "max_new_tokens": 4, "speed_tokens": 2,
                         "imatrix_tokens": 0},
        "staircase": {"rounds": 3, "gate": "beat_teacher_on_level", "gate_level": "hard",
                      "gate_margin": -0.5, "level_eval_rows": 3, "schedule": [
                          {"levels": ["easy"], "rows": 6, "samples": 2, "temperature": 0.7},
                          {"levels": ["mid"], "rows": 6, "replay": 0.34, "samples": 2,
                           "teacher": "curriculum"},
                          {"levels": ["mid", "hard"], "rows": 8, "replay": 0.25,
                           "samples": 3, "rationalize": True, "teacher": "curriculum"}],
                      **staircase},
    }
