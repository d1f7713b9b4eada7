# Every target installs what is missing first (tools/setup_env.sh is idempotent).
PY := .venv/bin/python
DATA ?= data

.PHONY: install demo demo-det demo-seg demo-search demo-export demo-edge demo-ablate test clean

install:
	@bash tools/setup_env.sh

demo: install
	$(PY) tools/demo_cls.py --data $(DATA)/toy_cls

demo-det: install
	$(PY) tools/demo_dense.py det --data $(DATA)

demo-seg: install
	$(PY) tools/demo_dense.py seg --data $(DATA)

demo-search: install
	$(PY) tools/demo_search.py --data $(DATA)/toy_cls

demo-export: install
	$(PY) tools/demo_export.py --data $(DATA)

demo-edge: install
	$(PY) tools/demo_edge.py --data $(DATA)

demo-ablate: install
	$(PY) tools/demo_ablate.py --data $(DATA)

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf work_dirs runs artifacts lightning_logs
