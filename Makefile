# The two commands of the README.
.PHONY: run test lint bench

run:            ## install and start the service on the embedded default (SQLite, web chat on :8080)
	python -m pip install -q -e .
	python -m bot serve

test:           ## install test dependencies (Python and system) and run the whole suite
	bash .ci/system-deps
	python -m pip install -q -e '.[test]'
	STOREDESK_CRASH_MESSAGES=10000 python -m pytest

lint:
	ruff check core bot channels faq tests bench
	mypy core bot channels faq

bench:
	python bench/faq_speed.py
	python bench/e2e.py
