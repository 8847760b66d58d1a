"""Client-side limits: AIMD concurrency, per-minute buckets, Retry-After, cache keys."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

from flows.teachers.base import Sampling, messages_json, request_key
from flows.teachers.limits import AdaptiveLimit, PerMinute, backoff_delay, parse_retry_after


def test_aimd_halves_once_per_overload_and_grows_back():
    lim = AdaptiveLimit(16, cooldown=60)
    lim.saturated()
    lim.saturated()  # same overload burst: counted once
    assert lim.limit == 8 and lim.lowest == 8
    for _ in range(8):
        lim.success()
    assert lim.limit == 9
    for _ in range(200):
        lim.success()
    assert lim.limit == 16  # never past the configured ceiling


def test_fixed_limit_when_not_adaptive():
    lim = AdaptiveLimit(4, adaptive=False)
    lim.saturated()
    assert lim.limit == 4


def test_per_minute_bucket_paces_after_the_burst():
    async def take(n):
        bucket = PerMinute(600)  # 10 per second, burst of 600
        bucket.level = 1.0
        t0 = time.monotonic()
        for _ in range(n):
            await bucket.take(1)
        return time.monotonic() - t0

    assert 0.25 <= asyncio.run(take(4)) < 1.0  # 1 free, then 3 at 10/s


def test_retry_after_is_honoured_and_backoff_is_bounded():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    # RFC 9110: an HTTP-date is read against our clock; one in the past means "now".
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    soon = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30),
                                       usegmt=True)
    assert 25 <= parse_retry_after({"retry-after": soon}) <= 31
    # Not a finite, non-negative number nor a date: ignored (a nan wait never ends).
    for junk in ("nan", "inf", "-1", "1e400", "soon", ""):
        assert parse_retry_after({"retry-after": junk}) is None, junk
    assert parse_retry_after({"retry-after-ms": "nan", "retry-after": "3"}) == 3.0
    far = parse_retry_after({"retry-after": "Sun, 06 Nov 2094 08:49:37 GMT"})
    assert backoff_delay(1, far) == 60.0  # every wait is bounded by the cap
    assert backoff_delay(3, 1.5) == 1.5
    assert all(0 <= backoff_delay(a, None) <= 60 for a in range(1, 30))


def test_request_key_covers_content_sampling_seed_and_sample_but_no_secrets():
    msgs = [{"role": "user", "content": "hi"}]
    s = Sampling(0.8, 0.95, 64, 0)
    k = request_key("openai:x:m", msgs, s, 0)
    assert k == request_key("openai:x:m", [dict(m) for m in msgs], Sampling(0.8, 0.95, 64, 0), 0)
    assert k != request_key("openai:x:m", msgs, s.for_sample(1), 1)
    assert k != request_key("openai:x:m", msgs, Sampling(0.7, 0.95, 64, 0), 0)
    assert k != request_key("openai:x:other", msgs, s, 0)
    assert k != request_key("openai:x:m", [{"role": "user", "content": "hi!"}], s, 0)


def test_request_key_is_byte_for_byte_the_key_stored_caches_hold():
    # request_key() assembles its blob from parts so plan() can serialize messages once; every
    # response cache written before was keyed by this one json.dumps of the whole dict.
    def stored_key(identity, messages, sampling, sample):
        blob = json.dumps({"teacher": identity, "messages": messages,
                           "sampling": sampling.as_dict(), "sample": sample},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    messages = [{"role": "system", "content": "Réponds «juste» — 数字\n\t\"quoted\" \\ \u2028"},
                {"role": "user", "content": "x", "name": "zoë", "extra": {"b": [1, 2.5], "a": None}}]
    schema = {"type": "object", "properties": {"answer": {"description": "le résultat"}}}
    for sampling, sample in [(Sampling(0.8, 0.95, 64, 7), 3), (Sampling(0.0, 1.0, 1, None), 0),
                             (Sampling(1.2, 0.5, 512, 0, 5, schema), 12)]:
        want = stored_key("openai:http://h:1/v1:m", messages, sampling, sample)
        assert request_key("openai:http://h:1/v1:m", messages, sampling, sample) == want
        assert request_key("openai:http://h:1/v1:m", messages, sampling, sample,
                           encoded_messages=messages_json(messages)) == want
