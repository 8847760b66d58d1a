"""Rationalization hints (STaR's second step): the template that shows the teacher the gold
answer, and what counts as a rationale quoting that hint instead of reasoning to the answer.

The generate stage asks with RATIONALIZE_TEMPLATE; curation drops its rows whose rationale
matches QUOTES_HINT (reason `quotes_hint`): a student trained without the hint must not learn to
cite one it will never see.
"""

from __future__ import annotations

RATIONALIZE_TEMPLATE = "rationalize"

# Phrases that refer to being given the answer (the template's "(Correct answer: N)" line, or
# talk about it), matched case-insensitively on the rationale.
QUOTES_HINT = (r"(?i)correct answer|\bhint\b|\b(?:was|were|am|are|been) (?:told|shown|given)\b"
               r"|\bgiven answer\b|\banswer (?:is|was) (?:given|shown|provided)\b")
