"""A chat-completions body as a Reply we can store: checked and normalised before anything is
cached or written. A reply the generate stage cannot use becomes a Reply with a named error
(`bad_reply: ...`), never an exception: one odd body must not stop a run, and an odd body that
reached the response cache used to crash every later run that read it back.

What the OpenAI API allows is normalised: `content` as a list of text parts is joined. What no
row can hold is an error: content that is not text (a number, an object, non-text parts), text
that is not valid Unicode (a lone surrogate such as "\\ud800", which no UTF-8 file can store),
token counts that are not whole numbers ("12" is read as 12).
"""

from __future__ import annotations

import json
from dataclasses import replace

from flows.teachers.base import Reply


class Unusable(ValueError):
    """Why a reply cannot become rows; the message is the row's error after `bad_reply: `."""


def text_of(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise Unusable(f"content is {_kind(content)}, not text")


def tokens_of(value, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Unusable(f"usage.{name} is {json.dumps(value)[:40]}, not a token count")
    return value


def storable(text: str, field: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Unusable(f"{field} is not valid Unicode (a lone surrogate)") from None
    return text


def from_choice(choice: dict, usage, logprobs: list | None) -> Reply:
    """A Reply from one choice of a chat-completions body and the body's `usage`."""
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return bad(f"message is {_kind(message)}")
    content = message.get("content")
    if content is None or content == "":
        content = message.get("refusal") or ""
    usage = usage if isinstance(usage, dict) else {}  # no usage block: tokens unknown (0)
    return check(Reply(text=content, finish_reason=choice.get("finish_reason"),
                       prompt_tokens=usage.get("prompt_tokens"),
                       completion_tokens=usage.get("completion_tokens"), logprobs=logprobs))


def check(reply: Reply) -> Reply:
    """The reply with its fields normalised when every one can be stored; else a Reply with a
    named error. Applied to fresh answers and to answers read back from the cache (which older
    versions filled without these checks)."""
    if reply.error is not None:
        return reply
    try:
        prompt = tokens_of(reply.prompt_tokens, "prompt_tokens")
        completion = tokens_of(reply.completion_tokens, "completion_tokens")
    except Unusable as e:
        return bad(str(e))
    try:
        text = storable(text_of(reply.text), "content")
        finish = reply.finish_reason
        if finish is not None and not isinstance(finish, str):
            raise Unusable(f"finish_reason is {_kind(finish)}, not text")
        if finish is not None:
            storable(finish, "finish_reason")
        if reply.logprobs is not None:
            if not isinstance(reply.logprobs, list):
                raise Unusable(f"logprobs is {_kind(reply.logprobs)}, not a list")
            storable(json.dumps(reply.logprobs, ensure_ascii=False), "logprobs")
    except Unusable as e:
        return bad(str(e), prompt, completion)  # the tokens were paid for all the same
    if text is reply.text and prompt == reply.prompt_tokens \
            and completion == reply.completion_tokens:
        # Already normal (almost every reply, and every reply checked before: the dispatcher
        # checks again what a backend checked): no copy. dataclasses.replace was a quarter of
        # this function's time at 20 ms latency (8,000 calls per 4,000 answers).
        return reply
    return replace(reply, text=text, prompt_tokens=prompt, completion_tokens=completion)


def bad(why: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> Reply:
    return Reply(error=f"bad_reply: {why}", prompt_tokens=prompt_tokens,
                 completion_tokens=completion_tokens)


def _kind(value) -> str:
    return "a number" if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else f"a {type(value).__name__}"
