# The README's commands. Everything runs with Debian's /usr/bin/python3 and Debian's
# Python packages (scripts/install-deps installs them); `python3` on PATH may differ.
PY := /usr/bin/python3
export PYTHONPATH := $(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

# The hook shim: C99, libc only. The packages build it with their distribution's
# hardening flags (dpkg-buildflags, %{optflags}) on top of these.
CC ?= cc
SHIM_CFLAGS := -std=c99 -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong
CFLAGS ?=
LDFLAGS ?=

.PHONY: all shim test deps bench demo clean

all: shim

shim: hooks/hookd-shim

hooks/hookd-shim: hooks/hookd-shim.c
	$(CC) $(SHIM_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $<

# Everything every suite needs (the packaging tools included: the unit suite checks the
# units with systemd-analyze and renders the man pages). Idempotent and quick when present.
deps:
	sh packaging/install-build-deps

test: deps shim
	$(PY) scripts/run-tests

bench: deps shim
	$(PY) bench/run.py

demo: deps shim
	$(PY) demo/demo.py

clean:
	rm -f hooks/hookd-shim
