# The README's commands. Everything runs with Debian's /usr/bin/python3 and Debian's
# Python packages (scripts/install-deps installs them); `python3` on PATH may differ.
PY := /usr/bin/python3
export PYTHONPATH := $(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test deps bench demo

# Everything every suite needs (the packaging tools included: the unit suite checks the
# units with systemd-analyze and renders the man pages). Idempotent and quick when present.
deps:
	sh packaging/install-build-deps

test: deps
	$(PY) scripts/run-tests

bench: deps
	$(PY) bench/run.py

demo: deps
	$(PY) demo/demo.py
