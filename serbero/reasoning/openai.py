"""The OpenAI-compatible chat-completions adapter (`openai`, `openai-compatible`; MED-184).

One wire format serves OpenAI itself and the services that copy it: PPQ.ai
(`https://api.ppq.ai`, no `/v1`) and OpenRouter (`https://openrouter.ai/api/v1`) both take
`POST {api_base}/chat/completions` with a Bearer key and answer with
`choices[0].message.content`. OpenRouter may also answer 200 with only an `error` object
when the upstream model failed after the request was accepted; that is read as the HTTP
status it names, so an upstream 502 is retried like a direct one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from serbero.config import Secret
from serbero.reasoning.adapter import CallKind, ChatAdapter
from serbero.reasoning.errors import MalformedResponse
from serbero.reasoning.transport import Transport

__all__ = ["OPENAI_NAMES", "OpenAIAdapter", "chat_completions_url", "takes_temperature"]

OPENAI_NAMES: Final = ("openai", "openai-compatible")
# Models that refuse a temperature other than their default; matched on the name after a
# router's `vendor/` prefix (OpenRouter's `openai/gpt-5`). The reference omits it for
# `gpt-5*` only; the o-series reasoning models refuse it the same way.
NO_TEMPERATURE_PREFIXES: Final = ("gpt-5", "o1", "o3", "o4")
TEMPERATURES: Final[Mapping[CallKind, float]] = {"classify": 0.0, "summarize": 0.2, "health": 0.0}
JSON_OBJECT: Final = {"type": "json_object"}


class _Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class _ResponseFormat(msgspec.Struct, frozen=True):
    type: str


class _Body(msgspec.Struct, frozen=True, omit_defaults=True):
    # Field order is the wire order of MED-184: model, messages, response_format, temperature.
    model: str
    messages: list[_Message]
    response_format: _ResponseFormat | None = None
    temperature: float | None = None


_ENCODER: Final = msgspec.json.Encoder()
_JSON_MODE: Final = _ResponseFormat("json_object")


def chat_completions_url(api_base: str) -> str:
    """`{api_base minus trailing '/'}/chat/completions`."""
    return api_base.rstrip("/") + "/chat/completions"


def takes_temperature(model: str) -> bool:
    """False for models that reject an explicit temperature (`gpt-5*`, the o-series)."""
    return not model.rsplit("/", 1)[-1].startswith(NO_TEMPERATURE_PREFIXES)


class OpenAIAdapter(ChatAdapter):
    """Chat completions with a Bearer key; JSON mode for classification."""

    def __init__(
        self, *, name: str, model: str, api_base: str, api_key: Secret, transport: Transport
    ) -> None:
        super().__init__(
            name=name, model=model, url=chat_completions_url(api_base), transport=transport
        )
        self._api_key = api_key
        self._temperature = takes_temperature(model)

    @property
    def headers(self) -> Mapping[str, str]:
        return {
            "authorization": f"Bearer {self._api_key.reveal()}",
            "content-type": "application/json",
        }

    def request_body(self, call: CallKind, system: str | None, prompt: str) -> bytes:
        messages = [_Message("user", prompt)]
        if system is not None:
            messages.insert(0, _Message("system", system))
        return _ENCODER.encode(
            _Body(
                model=self.model,
                messages=messages,
                response_format=_JSON_MODE if call == "classify" else None,
                temperature=TEMPERATURES[call] if self._temperature else None,
            )
        )

    def answer_text(self, document: dict[str, Any]) -> str:
        choices = document.get("choices")
        if not choices:
            self._raise_embedded_error(document)
            raise MalformedResponse(f"{self.name}: empty choices")
        first = choices[0] if isinstance(choices, list) else None
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise MalformedResponse(f"{self.name}: empty choices")
        return content

    def _raise_embedded_error(self, document: dict[str, Any]) -> None:
        error = document.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            message = error.get("message") if isinstance(error, dict) else None
            quoted = message.encode("utf-8", "replace") if isinstance(message, str) else b""
            raise self._transport.status_error(code, quoted)
