# Recipes run inside .venv (python3 dev.py <recipe> sets it up and puts it on PATH).
set shell := ["bash", "-euo", "pipefail", "-c"]

default:
    @just --list

# Whole test suite, then the linters: this is what CI runs.
test *ARGS:
    python -m pytest {{ARGS}}
    just lint

lint:
    ruff check .
    ruff format --check .
    mypy serbero

fmt:
    ruff format .
    ruff check --fix .

# The real daemon against a local relay, a simulated Mostro and three solver inboxes.
demo *ARGS:
    python -m demo.run {{ARGS}}

# The daemon itself (SERBERO_CONFIG or ./config.toml).
run:
    serbero

# Every benchmark script, each printing its figures next to its targets. Scripts run as modules
# of the repository (`python -m bench.notify`), so they import the test peers as `tests.support`.
bench:
    for f in bench/*.py; do m="$(basename "$f" .py)"; [[ "$m" == __init__ ]] && continue; echo "== $f"; python -m "bench.$m"; done

# 10,000 disputes over two relays stopped and restarted at random, the real daemon, three
# solver inboxes; prints its figures (~3-4 min). STRESS_SEED=n repeats a run's outage plan.
stress:
    python -m pytest tests/stress -p no:cacheprovider -o addopts="" -s
