"""The stress run (issue #7): not part of the default test run; `just stress` runs it."""
