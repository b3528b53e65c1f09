"""Mediation: the pure decisions (policy, guard) and the bring-up of its context."""
