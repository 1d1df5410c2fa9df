# Every target goes through scripts/with-torch-env.sh, which creates the torch venv on first use
# (outside the clone: $FOMAML_TORCH_VENV, default ~/.cache/fomaml/torch-2.11.0) and points tch at it.
ENV := scripts/with-torch-env.sh

.PHONY: demo test build golden doctor

demo:
	$(ENV) scripts/demo.sh

# tensorboard reads back the event files that tests/metrics.rs writes.
test:
	FOMAML_EXTRA_PIP="tensorboard==2.21.0" $(ENV) scripts/test.sh

build:
	$(ENV) cargo build --workspace --release

doctor:
	$(ENV) cargo run --quiet -- doctor

# Regenerates tests/fixtures/golden with the pinned transformers (not part of `make test`).
golden:
	FOMAML_EXTRA_PIP="transformers==5.23.0" $(ENV) python tests/golden/make_golden.py
	FOMAML_EXTRA_PIP="transformers==5.23.0" $(ENV) python tests/golden/make_tokenizer_golden.py
