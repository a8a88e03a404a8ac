# rpmimg: `make demo` and `make test` work on a fresh Debian 12 machine as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := rpm python3-rpm kmod python3-venv btrfs-progs rsync zstd createrepo-c \
	libsolv-tools gnupg xz-utils bzip2 cpio libcap2-bin attr time util-linux gzip \
	qemu-system-x86 ovmf systemd-boot-efi mtools gdisk fdisk

.PHONY: all deps venv fixtures test lint imports typecheck pytest demo playground bench clean \
	docs install-docs

all: venv docs

# The manual page and shell completion, generated from the argument parser itself.
PREFIX ?= /usr/local
DOCS := build/man/rpmimg.1 build/completion/rpmimg.bash build/completion/_rpmimg
docs: $(DOCS)

build/man/rpmimg.1: $(wildcard rpmimg/*.py) | venv
	mkdir -p $(@D)
	$(VENV)/bin/argparse-manpage --module rpmimg.cli --function build_parser --project-name rpmimg \
		--prog rpmimg --manual-title "rpmimg manual" --description "image-based OS updates from RPMs" \
		--output $@

build/completion/rpmimg.bash: $(wildcard rpmimg/*.py) | venv
	mkdir -p $(@D)
	$(VENV)/bin/shtab --shell=bash rpmimg.cli.build_parser > $@

build/completion/_rpmimg: $(wildcard rpmimg/*.py) | venv
	mkdir -p $(@D)
	$(VENV)/bin/shtab --shell=zsh rpmimg.cli.build_parser > $@

install-docs: docs
	install -D -m 644 build/man/rpmimg.1 $(DESTDIR)$(PREFIX)/share/man/man1/rpmimg.1
	install -D -m 644 build/completion/rpmimg.bash \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions/rpmimg
	install -D -m 644 build/completion/_rpmimg $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_rpmimg

# Install the Debian packages only when one is missing, so repeated runs stay fast.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.stamp: pyproject.toml | deps
	/usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: deps $(VENV)/.stamp

fixtures: venv
	$(PY) -m fixtures.build

lint: venv
	$(VENV)/bin/ruff check host rpmextents imagespec rpmimg solver deploy tests fixtures benchmarks

# The layering in pyproject.toml's [tool.importlinter] (README, "Code layout").
imports: venv
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy host rpmextents imagespec rpmimg solver deploy

pytest: venv fixtures
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint imports typecheck pytest

demo: venv fixtures
	$(PY) -m fixtures.demo

# Keys, repositories, a signed image and a loop btrfs sysroot to keep using (README, Quick start).
PLAYGROUND ?= /var/tmp/rpmimg-playground
playground: venv fixtures
	$(PY) -m fixtures.playground $(PLAYGROUND)

bench: venv fixtures
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .cache build
