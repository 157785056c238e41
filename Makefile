# The two commands: `make run` (serve the embedded default with demo traffic)
# and `make test` (the whole suite, real Prometheus included).
.PHONY: run test bench bootstrap

bootstrap:
	@scripts/bootstrap

run: bootstrap
	.venv/bin/flowscope serve --demo

test: bootstrap
	.venv/bin/python -m pytest -q

bench: bootstrap
	.venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python bench/run_all.py
