# The README's commands. Everything runs with Debian's /usr/bin/python3 and Debian's
# Python packages (scripts/install-deps installs them); `python3` on PATH may differ.
PY := /usr/bin/python3
export PYTHONPATH := $(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test deps bench demo

deps:
	sh scripts/install-deps

test: deps
	$(PY) scripts/run-tests

bench: deps
	$(PY) bench/run.py

demo: deps
	$(PY) demo/demo.py
