# Two commands do all set-up: `make demo` and `make test` each create the virtual environment
# (.venv) on first use, install ttc with its dependencies (torch pinned by constraints.txt), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ttc-installed

.PHONY: demo test bench bench-r34 docs fuzz clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[thirdparty,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ttc.demo

test: $(STAMP)
	$(PY) -m pytest -q

# The long fuzzing campaign (ttc.fuzz): FUZZ_INPUTS inputs per input reader (10^6 over the five), then
# FUZZ_CLI_INPUTS through the command line (each runs whole ttc commands); reproducers of failures in out/fuzz/.
FUZZ_INPUTS ?= 200000
FUZZ_CLI_INPUTS ?= 20000
FUZZ_SEED ?= 0
fuzz: $(STAMP)
	$(PY) -m ttc.fuzz --inputs $(FUZZ_INPUTS) --seed $(FUZZ_SEED) --targets program,asm,ir,hw,model --out out/fuzz
	$(PY) -m ttc.fuzz --inputs $(FUZZ_CLI_INPUTS) --seed $(FUZZ_SEED) --targets cli --out out/fuzz

bench: $(STAMP)
	$(PY) bench/sim_speed.py
	$(PY) bench/skip_density.py
	$(PY) bench/vgg_report.py
	$(PY) bench/train_digits.py
	$(PY) bench/tt_training.py

# TT-ResNet-34 STT as SATA_Sim ran it, beside SATA_Sim's figures (about 2 minutes; not part of `bench`).
bench-r34: $(STAMP)
	$(PY) bench/tt_resnet34_sata.py --json out/tt_resnet34_sata.json

docs: $(STAMP)
	$(PY) -m ttc.isa.docs > docs/isa.md
	$(PY) -m ttc.frontends.docs > docs/frontends.md
	$(PY) -m ttc.isa.hwdoc > docs/hardware-config.md

clean:
	rm -rf $(VENV) out
