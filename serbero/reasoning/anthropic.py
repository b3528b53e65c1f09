"""The native Anthropic Messages adapter (`anthropic`; MED-185).

`api_base` may be given with or without `/v1` (`https://api.anthropic.com` and
`https://api.anthropic.com/v1` reach the same endpoint). The answer's text is every `text`
block joined in order: a JSON object a model splits across blocks still parses, and blocks
of other types (thinking, tool use) are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from serbero.config import Secret
from serbero.reasoning.adapter import CallKind, ChatAdapter
from serbero.reasoning.errors import MalformedResponse
from serbero.reasoning.transport import Transport

__all__ = ["ANTHROPIC_VERSION", "AnthropicAdapter", "messages_url"]

ANTHROPIC_VERSION: Final = "2023-06-01"
MAX_TOKENS: Final[Mapping[CallKind, int]] = {"classify": 2048, "summarize": 4096, "health": 8}
TEMPERATURES: Final[Mapping[CallKind, float]] = {"classify": 0.0, "summarize": 0.2, "health": 0.0}


class _Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class _Body(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    # Field order is the wire order of MED-185; `system` is left out when there is none.
    model: str
    max_tokens: int
    system: str | None = None
    messages: list[_Message]
    temperature: float


_ENCODER: Final = msgspec.json.Encoder()


def messages_url(api_base: str) -> str:
    """`api_base` minus a trailing `/`, minus one trailing `/v1`, plus `/v1/messages`."""
    base = api_base.rstrip("/")
    base = base.removesuffix("/v1")
    return base + "/v1/messages"


class AnthropicAdapter(ChatAdapter):
    """The Messages API with an `x-api-key` header and a pinned API version."""

    def __init__(self, *, model: str, api_base: str, api_key: Secret, transport: Transport) -> None:
        super().__init__(
            name="anthropic", model=model, url=messages_url(api_base), transport=transport
        )
        self._api_key = api_key

    @property
    def headers(self) -> Mapping[str, str]:
        return {
            "x-api-key": self._api_key.reveal(),
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }

    def request_body(self, call: CallKind, system: str | None, prompt: str) -> bytes:
        return _ENCODER.encode(
            _Body(
                model=self.model,
                max_tokens=MAX_TOKENS[call],
                system=system,
                messages=[_Message("user", prompt)],
                temperature=TEMPERATURES[call],
            )
        )

    def answer_text(self, document: dict[str, Any]) -> str:
        blocks = document.get("content")
        if not isinstance(blocks, list):
            raise MalformedResponse("no text block in anthropic response")
        texts = []
        for block in blocks:
            if not isinstance(block, dict) or block.get("type") != "text":
                continue
            text = block.get("text")
            if not isinstance(text, str):
                raise MalformedResponse("anthropic text block without text")
            texts.append(text)
        if not texts:
            raise MalformedResponse("no text block in anthropic response")
        return "".join(texts)
