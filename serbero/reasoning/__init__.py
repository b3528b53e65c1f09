"""Reasoning providers: ask a language model to classify or summarise a dispute.

The model only advises. Its answers are parsed into closed types (`types`), every failure is
a `ReasoningError` with a category (`errors`), and the mediation policy and guard decide what,
if anything, reaches a party.
"""
