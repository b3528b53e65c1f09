"""The authority-boundary guard: no model text that instructs or promises a fund movement
reaches anyone (MED-130..132, BEY-19).

Serbero's only Mostro action is taking a dispute (MED-130). A model can still be talked into
writing "release the funds" or "I will refund you" to a party, or into telling a solver to
`admin-settle`; words like that from Serbero would carry an authority it does not have. So
every summary (MED-131) *and* every clarification (BEY-19, Q-11) is scanned before it is
used, and a hit suppresses the text: the caller escalates with `authority_boundary_attempt`.

What counts as a hit (the boundary, documented so it can be argued about):

- any Mostro admin settle/cancel command in any spelling: `admin-settle`, `admin_cancel`,
  `AdminSettleDispute`, `admin settle`, letter-spaced, in look-alike letters;
- a fund verb in the present, imperative or future with a fund object: "release (the)
  funds", "send the sats", "refund the money", "transfer funds", "unlock the escrow",
  "release of the funds", "refund you / the buyer";
- a closure verb on the trade, order or dispute: "cancel the order", "settle the trade",
  "close the dispute", and "force close" in any form;
- a promise by Serbero: "I will refund", "we'll release", "Serbero can settle", "you will be
  refunded", "you'll get your sats back".

Negation does not excuse a phrase ("I cannot release the funds" is a hit): the prompts tell
the model never to use these words, and a false alarm only hands the dispute to a human.
Not hits: past tense and reports ("the seller says they released nothing", "the order was
cancelled"), nouns ("the refund policy", "a bank transfer"), fiat questions ("did you send
the payment?"), and fund verbs on other objects ("send a screenshot", "close the app").

Before matching, text is normalised so spelling tricks do not hide a phrase: compatibility
forms (full-width, mathematical letters) are folded, accents, zero-width and other format
characters dropped, Cyrillic and Greek look-alikes mapped to Latin, camelCase split, runs of
single letters ("r e l e a s e") joined, and every other separator becomes one space.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

import msgspec

from serbero.reasoning.types import Summary

__all__ = [
    "CLARIFICATION_ATTEMPT",
    "EMPTY_SUMMARY",
    "REFERENCE_PHRASES",
    "SUMMARY_ATTEMPT",
    "GuardViolation",
    "check_clarification",
    "check_summary",
]

EMPTY_SUMMARY: Final = "empty summary or suggested next step from reasoning provider"
SUMMARY_ATTEMPT: Final = "authority boundary attempt in summary"
CLARIFICATION_ATTEMPT: Final = "authority boundary attempt in clarification"

# The reference's summary list (MED-131); every entry is a hit here too (tested).
REFERENCE_PHRASES: Final = (
    "admin-settle",
    "admin_settle",
    "admin-cancel",
    "admin_cancel",
    "release funds",
    "release the funds",
    "settle the trade",
    "settle funds",
    "cancel trade",
    "cancel the trade",
    "force close",
    "force-close",
    "move funds",
    "transfer funds",
    "disburse funds",
    "close the dispute",
)

# Latin look-alikes from Cyrillic and Greek, and apostrophe variants (applied after NFKD).
_CONFUSABLES: Final = str.maketrans(
    {
        **dict(zip("аеорсухіјѕһԁԛԝкмтвп", "aeopcyxijshdqwkmtbn", strict=True)),
        **dict(zip("АВЕКМНОРСТХУІЈЅ", "ABEKMHOPCTXYIJS", strict=True)),
        **dict(zip("αοερτιυκνχ", "aoeptiukvx", strict=True)),
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)),
        "\u2018": "'",
        "\u2019": "'",
        "\u02bc": "'",
        "\u2032": "'",
    }
)
# An upper-case letter right after a lower-case one: `ReleaseFunds` -> `Release Funds`.
# Starting with the upper-case class lets the regex engine skip ahead to capitals.
_CAMEL: Final = re.compile(r"[A-Z](?<=[a-z][A-Z])")
# Contractions, so "I'll" reads as "i will" and "won't" as "will not": whole words first,
# then the endings (the pattern starts with the apostrophe, a literal the engine jumps to).
_NEGATIONS: Final = (("won't", "will not"), ("can't", "can not"), ("shan't", "shall not"))
_CONTRACTION: Final = re.compile(r"'(ll|re|ve|m|d|s)\b")
_ENDINGS: Final = {"ll": " will", "re": " are", "ve": " have", "m": " am", "d": " would", "s": ""}
# Every ASCII character but letters and digits separates words (non-ASCII punctuation is
# turned into spaces by `_fold`).
_SEPARATORS: Final = str.maketrans(
    {chr(code): " " for code in range(128) if not chr(code).isalnum()}
)
# Three or more one-letter words in a row spell a word out ("r e l e a s e"); shorter runs
# are ordinary text ("a", "I").
_MIN_SPELLED_RUN: Final = 3
_SPELLED_PROBE: Final = re.compile(r" [^\W\d_] [^\W\d_] [^\W\d_] ")

_DET: Final = (
    r"(?:(?:all|of|the|your|their|his|her|my|our|these|those|this|that|any|some|its|both"
    r"|locked|escrowed|held|remaining|trade|order) ){0,3}"
)
_TO_WHOM: Final = r"(?:(?:you|him|her|them|me|us|back|the buyer|the seller|both) )?"
_CRYPTO: Final = r"(?:funds?|sats?|satoshis?|bitcoins?|btc|escrow|collateral)"
_ANY_MONEY: Final = r"(?:funds?|sats?|satoshis?|bitcoins?|btc|escrow|collateral|money|payment)"
_CLOSABLE: Final = r"(?:trades?|orders?|disputes?|escrow|deal|case)"
_SUBJECT: Final = r"(?:i|we|serbero|the mediator|the assistant)"
_MODAL: Final = (
    r"(?:will|shall|can|could|would|may|might|am going to|are going to|is going to)"
    r"(?: personally| now| immediately| then)?"
)
# Matched against " word word ... ": the leading space (a literal prefix) lets the regex
# engine jump from word start to word start.
_PHRASES: Final = re.compile(
    r" (?:"
    r"(?:release|releasing|disburse|unlock|unfreeze|refund|return|reimburse) "
    rf"{_TO_WHOM}{_DET}{_ANY_MONEY}"
    rf"|(?:send|transfer|move|pay|pay out|settle) {_TO_WHOM}{_DET}{_CRYPTO}"
    rf"|(?:release|refund|transfer|return|disbursement) of {_DET}{_ANY_MONEY}"
    r"|refund (?:you|him|her|them|both|the buyer|the seller|the other party)"
    rf"|(?:cancel|close|settle|terminate|abort|finalize|finalise) {_DET}{_CLOSABLE}"
    r"|force (?:close|closing|closed|cancel|settle)"
    rf"|{_SUBJECT} {_MODAL} (?:release|refund|reimburse|settle|cancel|disburse|unlock"
    r"|compensate|pay you|pay back)"
    r"|(?:will|shall|going to) be (?:refunded|reimbursed|released|returned|settled"
    r"|cancelled|canceled|paid|compensated)"
    rf"|(?:will|shall|going to) (?:get|receive) {_DET}{_ANY_MONEY} back"
    r"|admin (?:settle|cancel)"
    r")\b"
)
_ADMIN_SQUASHED: Final = re.compile(r"admin(?:settle|cancel)")
# Every phrase above contains one of these words: a text with none of them skips the regex.
# fmt: off
_ANCHORS: Final = frozenset((
    "release", "releasing", "released", "disburse", "disbursement", "unlock", "unfreeze",
    "refund", "refunded", "return", "returned", "reimburse", "reimbursed", "compensate",
    "compensated", "send", "transfer", "move", "pay", "paid", "settle", "settled", "cancel",
    "cancelled", "canceled", "close", "terminate", "abort", "finalize", "finalise", "force",
    "back", "admin",
))
# fmt: on


class GuardViolation(msgspec.Struct, frozen=True, kw_only=True):
    """Why a text was suppressed. `reason` is a fixed sentence (MED-131); `matched` is the
    normalised phrase that hit (our vocabulary, safe to log), empty for a blank summary."""

    reason: str
    matched: str = ""


def _fold(text: str) -> str:
    """Compatibility forms, look-alikes, accents and invisible characters out; punctuation
    and symbols become spaces (apostrophes stay for the contractions)."""
    text = unicodedata.normalize("NFKD", text).translate(_CONFUSABLES)
    kept: list[str] = []
    for char in text:
        if char.isascii():
            kept.append(char)
            continue
        category = unicodedata.category(char)[0]
        if category in "LN":
            kept.append(char)
        elif category in "ZPS" or char == "\x85":
            kept.append(" ")
    return "".join(kept)


def _ending(match: re.Match[str]) -> str:
    return _ENDINGS[match.group(1)]


def _expand_contractions(text: str) -> str:
    text = text.replace("`", "'")
    for contraction, words in _NEGATIONS:
        text = text.replace(contraction, words)
    return _CONTRACTION.sub(_ending, text.replace("n't", " not"))


def _join_spelled(words: list[str]) -> list[str]:
    """`r e l e a s e` -> `release`."""
    joined: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:
        if len(word) == 1 and word.isalpha():
            run.append(word)
            continue
        if len(run) >= _MIN_SPELLED_RUN:
            joined.append("".join(run))
        else:
            joined.extend(run)
        run = []
        if word:
            joined.append(word)
    return joined


def _normalised(text: str) -> str:
    """The words of `text` as the guard compares them: folded, lower case, single spaces,
    with one space before the first word and after the last."""
    if not text.isascii():
        text = _fold(text)
    if _CAMEL.search(text):
        text = _CAMEL.sub(r" \g<0>", text)
    text = text.casefold()
    if "'" in text or "`" in text:
        text = _expand_contractions(text)
    words = text.translate(_SEPARATORS).split()
    joined = f" {' '.join(words)} "
    if _SPELLED_PROBE.search(joined):
        joined = f" {' '.join(_join_spelled(words))} "
    return joined


def _find(text: str) -> str | None:
    words = _normalised(text)
    if not _ANCHORS.isdisjoint(words.split()):
        found = _PHRASES.search(words)
        if found is not None:
            return found.group(0).strip()
    if "admin" not in words:
        return None
    squashed = _ADMIN_SQUASHED.search(words.replace(" ", ""))
    return None if squashed is None else squashed.group(0)


def check_summary(summary: Summary) -> GuardViolation | None:
    """MED-131 on `summary_text` and `suggested_next_step`: blank, or a phrase hit."""
    if not summary.summary_text.strip() or not summary.suggested_next_step.strip():
        return GuardViolation(reason=EMPTY_SUMMARY)
    for text in (summary.summary_text, summary.suggested_next_step):
        matched = _find(text)
        if matched is not None:
            return GuardViolation(reason=SUMMARY_ATTEMPT, matched=matched)
    return None


def check_clarification(text: str) -> GuardViolation | None:
    """BEY-19: a question for a party, scanned with the same list as summaries."""
    matched = _find(text)
    return (
        None if matched is None else GuardViolation(reason=CLARIFICATION_ATTEMPT, matched=matched)
    )
