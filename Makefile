# The three commands of the README: `make demo` (install + run the demo), `make app` (install + start the browser
# demo on 127.0.0.1:7860) and `make test` (install + run the tests).
# Everything installs into .venv from pinned versions (requirements/constraints.txt); nothing else is downloaded.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install -q -c requirements/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: demo app test install clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e ".[test]"
	SAM2_BUILD_CUDA=0 $(PIP) --no-build-isolation sam2==1.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medsam-agent demo --out out/demo

app: $(STAMP)
	$(VENV)/bin/medsam-agent app --out out/app

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) out
