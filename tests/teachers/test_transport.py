"""The fast transport's JSON: orjson first, the stdlib for what orjson refuses."""

from __future__ import annotations

import math

import pytest

from flows.teachers.transport import _loads


def test_replies_with_non_standard_numbers_still_parse():
    body = b'{"choices": [{"logprobs": {"content": [{"logprob": -Infinity}, {"logprob": NaN}]}}]}'
    content = _loads(body)["choices"][0]["logprobs"]["content"]
    assert content[0]["logprob"] == -math.inf and math.isnan(content[1]["logprob"])
    assert _loads('{"text": "é 数字"}'.encode()) == {"text": "é 数字"}
    with pytest.raises(ValueError):  # FastTransport.chat turns this into a retry
        _loads(b'{"id": "x", "choices": [ this is not json')
