"""Reasoning hot paths: what Serbero adds around a model call, and whether calls overlap.

Plain script: ``python -m bench.reasoning``. Figures, each beside its issue-15 target:

- policy + guard + parse of one model answer (a classification asking both parties a
  question, and a summary), µs per answer;
- adapter overhead: building the prompt and the request body, decoding the reply, reading
  the answer's text and parsing it, for both wire formats; the network is not included
  (a full loopback call is printed beside it for reference);
- 100 concurrent classify calls against a scripted server (its own process) that answers
  each after 200 ms, through one `httpx.AsyncClient` that has made one health check (as
  at bring-up) and so opens 99 new connections: the wall time for all, worst of several
  rounds.

Per-call figures are the median (and best) of several rounds of the mean time per call.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Final

import httpx
import msgspec
import trio

from bench.timing import per_call_us
from serbero.config import PromptsConfig, ReasoningConfig, Secret
from serbero.mediation.guard import check_summary
from serbero.mediation.policy import AskClarification, Initial, decide
from serbero.reasoning.adapter import ChatAdapter
from serbero.reasoning.bundle import PromptBundle, load_bundle
from serbero.reasoning.parse import parse_classification, parse_summary
from serbero.reasoning.prompting import classification_prompt
from serbero.reasoning.provider import build_provider
from serbero.reasoning.types import ClassifyRequest, TranscriptEntry
from tests.support.scripted_llm import anthropic_reply, open_scripted_llm, openai_reply

CALLS_PER_ROUND: Final = 2_000
ADAPTER_CALLS_PER_ROUND: Final = 300
TARGET_DECIDE_US: Final = 50.0
TARGET_ADAPTER_US: Final = 1_000.0
TARGET_CONCURRENT_S: Final = 0.5
CONCURRENT_CALLS: Final = 100
SERVER_DELAY_S: Final = 0.2
CONCURRENT_ROUNDS: Final = 5
LOOPBACK_CALLS: Final = 200

ASK_ANSWER: Final = msgspec.json.encode(
    {
        "classification": "coordination_failure_resolvable",
        "confidence": 0.72,
        "suggested_action": "ask_clarification",
        "rationale": "The buyer reports a transfer at 10:05; the seller has not confirmed "
        "receipt. A bank delay is the likeliest explanation.",
        "flags": ["low_info"],
        "buyer_clarification": "Could you share the time and the reference of your transfer?",
        "seller_clarification": "Could you check whether a transfer with that reference has "
        "reached your account, including pending items?",
    }
).decode()
SUMMARY_ANSWER: Final = (
    "The buyer says the fiat transfer left their bank at 10:05 with the order reference; "
    "the seller saw nothing by 11:00 but confirms the account details are right. Both have "
    "answered promptly and neither disputes the other's account of events.\n"
    "SUGGESTED_NEXT_STEP: ask the buyer for the bank's transfer confirmation and check it "
    "against the seller's statement.\n"
    "RATIONALE: a delayed interbank transfer explains both accounts."
)


def transcript(messages: int = 40) -> tuple[TranscriptEntry, ...]:
    """A full-size transcript (the engine caps it at 40 messages)."""
    speakers = ("serbero", "buyer", "seller")
    line = "I sent the payment this morning and attached the receipt from my bank app. " * 2
    return tuple(
        TranscriptEntry(speakers[i % 3], 1_700_000_000 + 60 * i, line) for i in range(messages)
    )


def row(label: str, figures: tuple[float, float], target: float) -> None:
    best, median = figures
    verdict = "OK" if median <= target else "OVER"
    print(
        f"{label:<48} median {median:>8.1f} µs  (best {best:>7.1f})  "
        f"target <= {target:,.0f} µs  {verdict}"
    )


def bench_decide() -> None:
    def classification_path() -> None:
        action = decide(parse_classification(ASK_ANSWER), Initial())
        assert isinstance(action, AskClarification)

    def summary_path() -> None:
        assert check_summary(parse_summary(SUMMARY_ANSWER)) is None

    row(
        "parse + policy + guard, ask answer",
        per_call_us(classification_path, CALLS_PER_ROUND),
        TARGET_DECIDE_US,
    )
    row(
        "parse + guard, summary answer",
        per_call_us(summary_path, CALLS_PER_ROUND),
        TARGET_DECIDE_US,
    )


def config(provider: str, api_base: str) -> ReasoningConfig:
    return ReasoningConfig(
        enabled=True,
        provider=provider,
        model="gpt-4o-mini" if provider == "openai" else "claude-sonnet-4-5",
        api_base=api_base,
        api_key=Secret("sk-bench"),
        request_timeout_seconds=30,
        followup_retry_count=0,
    )


def bench_adapters(bundle: PromptBundle, request: ClassifyRequest) -> None:
    replies = {"openai": openai_reply(ASK_ANSWER), "anthropic": anthropic_reply(ASK_ANSWER)}
    for name, reply in replies.items():
        adapter = build_provider(config(name, "http://127.0.0.1:9"), httpx.AsyncClient())
        assert isinstance(adapter, ChatAdapter)

        def overhead(adapter: ChatAdapter = adapter, body: bytes = reply.body) -> None:
            prompt = classification_prompt(request, bundle)
            adapter.request_body("classify", bundle.system, prompt)
            dict(adapter.headers)
            parse_classification(adapter.answer_text(msgspec.json.decode(body)))

        row(
            f"adapter overhead, {name}, 40 messages",
            per_call_us(overhead, ADAPTER_CALLS_PER_ROUND),
            TARGET_ADAPTER_US,
        )


async def loopback_round_trip(bundle: PromptBundle, request: ClassifyRequest) -> None:
    async with open_scripted_llm(openai_reply(ASK_ANSWER)) as llm, httpx.AsyncClient() as client:
        provider = build_provider(config("openai", llm.url), client)
        await provider.classify(request, bundle)
        samples = []
        for _ in range(LOOPBACK_CALLS):
            start = time.perf_counter()
            await provider.classify(request, bundle)
            samples.append((time.perf_counter() - start) * 1e6)
    print(
        f"{'(reference) full classify call over loopback':<48} median "
        f"{statistics.median(samples):>8.1f} µs  (server in the same process)"
    )


def server_process(content: str, delay: float) -> AbstractContextManager[str]:
    """The scripted model API in its own process (its CPU is not Serbero's); yields its URL."""
    command = [sys.executable, "-m", "tests.support.scripted_llm", "--format", "openai"]
    return url_process([*command, "--content", content, "--delay", str(delay)])


@contextmanager
def url_process(command: list[str]) -> Iterator[str]:
    """A server process that prints its URL on one line and serves until its stdin closes;
    yields the URL."""
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as server:
        assert server.stdout is not None and server.stdin is not None
        url = server.stdout.readline().strip()
        try:
            yield url
        finally:
            server.stdin.close()
            server.wait(10)


async def concurrent_rounds(
    url: str, bundle: PromptBundle, request: ClassifyRequest
) -> tuple[list[float], list[float]]:
    """Wall seconds and this process's CPU seconds of each round."""
    spans, cpu = [], []
    for _ in range(CONCURRENT_ROUNDS):
        async with httpx.AsyncClient() as client:  # fresh connections every round
            provider = build_provider(config("openai", url), client)
            await provider.health_check()  # as at bring-up; its connection is one of 100
            start, cpu_start = trio.current_time(), time.process_time()
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENT_CALLS):
                    nursery.start_soon(provider.classify, request, bundle)
            spans.append(trio.current_time() - start)
            cpu.append(time.process_time() - cpu_start)
    return spans, cpu


def concurrent_calls(bundle: PromptBundle, request: ClassifyRequest) -> None:
    with server_process(ASK_ANSWER, SERVER_DELAY_S) as url:
        spans, cpu = trio.run(concurrent_rounds, url, bundle, request)
    worst = max(spans)
    verdict = "OK" if worst <= TARGET_CONCURRENT_S else "OVER"
    print(
        f"{f'{CONCURRENT_CALLS} concurrent classify, server 200 ms':<48} worst "
        f"{worst:>8.3f} s   (median {statistics.median(spans):.3f} s over {CONCURRENT_ROUNDS} "
        f"rounds)  target <= {TARGET_CONCURRENT_S} s  {verdict}"
    )
    print(
        f"{'  of which CPU in this process, per round':<48} median "
        f"{statistics.median(cpu) * 1000:>8.1f} ms  (the rest is the 200 ms wait and the "
        f"machine's other work)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as empty:
        bundle = load_bundle(PromptsConfig(), cwd=Path(empty))  # the packaged prompts
    request = ClassifyRequest("session", "dispute", "buyer", 1, transcript())
    bench_decide()
    bench_adapters(bundle, request)
    trio.run(loopback_round_trip, bundle, request)
    concurrent_calls(bundle, request)


if __name__ == "__main__":
    main()
