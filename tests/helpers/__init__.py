"""Shared test helpers: tiny models and tokenizers, fixtures that write real stage outputs, and a
loopback fake of an OpenAI-compatible server."""
