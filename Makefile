# The two commands: `make run` (serve the embedded default with demo traffic; installs only
# what running needs: a venv and the project, no apt, no sudo) and `make test` (the whole
# suite, real Prometheus included: Debian packages and the test extras too).
.PHONY: run test bench bootstrap bootstrap-run

bootstrap:
	@scripts/bootstrap

bootstrap-run:
	@scripts/bootstrap-python

run: bootstrap-run
	.venv/bin/flowscope serve --demo

test: bootstrap
	.venv/bin/python -m pytest -q -n 4

bench: bootstrap
	.venv/bin/python -m pip install -q -e '.[bench]'
	.venv/bin/python bench/run_all.py
