"""What every model adapter does the same way: build the prompt, post it, read the answer.

An adapter subclass only knows its wire format: the URL and headers, how a call becomes a
request body (`request_body`), and where the answer's text sits in the reply
(`answer_text`). This base turns that into the provider protocol's three calls, so the
prompts, the parsing and the logging of a bad answer (length and hash only, MED-172) are
identical for every provider (MED-180: call sites never branch on the provider).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from serbero.log import get_logger
from serbero.reasoning.errors import MalformedResponse
from serbero.reasoning.parse import fingerprint, parse_classification, parse_summary
from serbero.reasoning.prompting import classification_prompt, summary_prompt
from serbero.reasoning.transport import Transport
from serbero.reasoning.types import (
    Classification,
    ClassifyRequest,
    SummarizeRequest,
    Summary,
)

if TYPE_CHECKING:
    from serbero.reasoning.bundle import PromptBundle

__all__ = ["HEALTH_PROMPT", "CallKind", "ChatAdapter"]

# The three calls of MED-180, each with its own temperature, token budget and format.
CallKind = Literal["classify", "summarize", "health"]
HEALTH_PROMPT: Final = "ping"

log = get_logger("serbero.reasoning")
Answer = TypeVar("Answer")


class ChatAdapter(abc.ABC):
    """A reasoning provider over one chat-style HTTP API; subclasses define the wire format."""

    def __init__(self, *, name: str, model: str, url: str, transport: Transport) -> None:
        self.name = name
        self.model = model
        self.url = url
        self._transport = transport

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, url={self.url!r})"

    @property
    @abc.abstractmethod
    def headers(self) -> Mapping[str, str]:
        """The request headers, credential included; never logged or shown."""

    @abc.abstractmethod
    def request_body(self, call: CallKind, system: str | None, prompt: str) -> bytes:
        """The JSON body of one call: `system` as the system prompt, `prompt` as the user turn."""

    @abc.abstractmethod
    def answer_text(self, document: dict[str, Any]) -> str:
        """The model's text in a decoded 2xx reply; `MalformedResponse` if there is none."""

    async def classify(self, request: ClassifyRequest, bundle: PromptBundle) -> Classification:
        """Ask for a classification of the dispute so far (MED-181/182)."""
        prompt = classification_prompt(request, bundle)
        text, attempts = await self._complete("classify", bundle.system, prompt)
        return self._read("classify", parse_classification, text, attempts)

    async def summarize(self, request: SummarizeRequest, bundle: PromptBundle) -> Summary:
        """Ask for the solver's summary of the dispute (MED-181/183)."""
        text, attempts = await self._complete(
            "summarize", bundle.system, summary_prompt(request, bundle)
        )
        return self._read("summarize", parse_summary, text, attempts)

    async def health_check(self) -> None:
        """One minimal request; healthy iff it yields text (MED-189). Raises `ReasoningError`."""
        await self._complete("health", None, HEALTH_PROMPT)

    async def _complete(self, call: CallKind, system: str | None, prompt: str) -> tuple[str, int]:
        body = self.request_body(call, system, prompt)
        return await self._transport.post_json(self.url, self.headers, body, self.answer_text)

    def _read(
        self, call: CallKind, parse: Callable[[str], Answer], text: str, attempts: int
    ) -> Answer:
        try:
            return parse(text)
        except MalformedResponse as error:
            error.attempts = attempts
            chars, digest = fingerprint(text)
            log.warning(
                "reasoning_answer_malformed",
                provider=self.name,
                model=self.model,
                call=call,
                reason=error.message,
                answer_chars=chars,
                answer_sha256=digest,
            )
            raise
