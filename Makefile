# `make deb` builds the Debian package; `make test` and `make demo` are the README's commands.
DIST ?= dist

.PHONY: deb test demo

deb:
	debian/build-deb.sh $(DIST)

test:
	bash .ci/install && .venv/bin/python -m pytest

demo:
	bash .ci/install && .venv/bin/ftp-alg lab demo
