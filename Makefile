# One command each: `make demo` and `make test` set up the virtual environment when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean messages

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("tracker needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) run.py demo

# tests/test_browser.py drives Debian's chromium: Playwright cannot download a browser here.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

# tests/test_systemd.py checks the systemd unit with systemd-analyze (Debian's systemd package,
# nothing is started) and traces the daemon's system calls with strace.
SYSTEMD_ANALYZE ?= /usr/bin/systemd-analyze
STRACE ?= /usr/bin/strace

$(SYSTEMD_ANALYZE):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends systemd

$(STRACE):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends strace

test: $(STAMP) $(CHROMIUM) $(SYSTEMD_ANALYZE) $(STRACE)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest --cov --cov-report=term

# The page's catalogues: new strings of the source into both .po files (translate, then test).
# Nothing to compile: the daemon compiles the .po files in memory when it starts.
messages: $(STAMP)
	mkdir -p build
	$(VENV)/bin/pybabel extract -F babel.cfg -k N_ --no-location --omit-header -o build/messages.pot .
	$(VENV)/bin/pybabel update -i build/messages.pot -d tracker/locale -D messages --width 100

bench: $(STAMP)
	$(PY) run.py bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
