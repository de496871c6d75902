# pgsessions: make setup | test | lint | docs | package-check | demo | drill | bench   (see README.md)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
EXTRAS ?= dev,bench,plot,docs
PYTEST_ARGS ?=

.PHONY: setup postgres pgbouncer patroni backup-tools lint docs package-check check test test-app-role demo drill drill-patroni bench bench-fleet clean

setup: postgres $(VENV)/.installed-$(EXTRAS)

# The install step of the targets below, which run it only when what they need is missing:
# `$(APT_INSTALL) PACKAGES` (as root, or through sudo).
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q

# Installs the PostgreSQL server with apt-get only when no server binaries are found.
postgres:
	@if $(PYTHON) -c 'import sys; sys.path.insert(0, "."); from pgsessions.devcluster.binaries import find_bindir; print("PostgreSQL server binaries:", find_bindir())' 2>/dev/null; then :; \
	elif ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then echo "PostgreSQL server binaries: $$(ls -d /usr/lib/postgresql/*/bin | tail -1)"; \
	elif command -v apt-get >/dev/null; then \
		echo "No PostgreSQL server binaries found: installing the postgresql package"; \
		$(APT_INSTALL) postgresql; \
	else echo "No PostgreSQL server binaries and no apt-get: install PostgreSQL 13+ and set PGSESSIONS_PG_BINDIR"; exit 1; fi

# Installs PgBouncer (the conformance tests run through it) only when it is missing.
pgbouncer:
	@if PATH="$$PATH:/usr/sbin:/sbin" command -v pgbouncer >/dev/null; then echo "PgBouncer: $$(PATH="$$PATH:/usr/sbin:/sbin" command -v pgbouncer)"; \
	elif command -v apt-get >/dev/null; then \
		echo "No pgbouncer found: installing the pgbouncer package"; \
		$(APT_INSTALL) pgbouncer; \
	else echo "No pgbouncer and no apt-get: install PgBouncer or set PGSESSIONS_PGBOUNCER"; exit 1; fi

# Installs Patroni and etcd (for `pgsessions cluster up --patroni`) only when they are missing.
patroni:
	@if PATH="$$PATH:/usr/sbin:/sbin" command -v patroni >/dev/null && PATH="$$PATH:/usr/sbin:/sbin" command -v etcd >/dev/null; then echo "Patroni: $$(command -v patroni), etcd: $$(command -v etcd)"; \
	elif command -v apt-get >/dev/null; then \
		echo "Patroni or etcd missing: installing the patroni and etcd-server packages"; \
		$(APT_INSTALL) patroni etcd-server; \
	else echo "No patroni/etcd and no apt-get: install Patroni 3 and etcd 3.4+"; exit 1; fi

# Installs pgBackRest and Barman (`cluster up --backup`, `drill pitr --tool`) only when missing.
backup-tools:
	@if PATH="$$PATH:/usr/sbin:/sbin" command -v pgbackrest >/dev/null && PATH="$$PATH:/usr/sbin:/sbin" command -v barman >/dev/null; then echo "pgBackRest: $$(command -v pgbackrest), Barman: $$(command -v barman)"; \
	elif command -v apt-get >/dev/null; then \
		echo "pgbackrest or barman missing: installing the pgbackrest and barman packages"; \
		$(APT_INSTALL) pgbackrest barman; \
	else echo "No pgbackrest/barman and no apt-get: install pgBackRest 2.4x and Barman 3"; exit 1; fi

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[$(EXTRAS)]'
	@touch $@

lint: setup
	$(VENV)/bin/ruff check pgsessions tests bench examples docs/*.py
	$(VENV)/bin/ruff format --check pgsessions tests bench examples docs/*.py
	$(VENV)/bin/mypy

# The documentation site (mkdocs.yml, docs/) into site/; any warning (a broken link or anchor,
# an API name mkdocstrings cannot find) fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

# What CI checks of the package (also part of `make test`): build the sdist and the wheel,
# twine check them, install the wheel into a fresh venv outside the clone and run
# `pgsessions --help` and a session round trip on the local cluster from there.
package-check: setup
	$(VENV)/bin/pytest -q tests/lab/test_package.py -k wheel

# The fast tier alone: pure decisions and house rules, no PostgreSQL (tests/unit, seconds).
check: lint
	$(VENV)/bin/pytest -q tests/unit

# Every tier: unit, integration (the shared local cluster), lab (drills, faults, the real
# stack: Patroni, PgBouncer, TLS, backup tools, the package).
test: lint docs pgbouncer patroni backup-tools
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)
	@[ -n "$(PYTEST_ARGS)" ] || $(MAKE) --no-print-directory test-app-role

# The session and router suites again, the router connected as a least-privilege app role
# (tests/conftest.py, PGSESSIONS_TEST_ROLE=app); tests marked owner_sql are skipped.
APP_ROLE_TESTS := tests/integration/test_sessions_semantics.py tests/integration/test_sessions_roundtrip.py \
	tests/integration/test_sessions_usage.py tests/integration/test_sessions_listing.py tests/integration/test_sdk_compaction.py \
	tests/integration/test_sessions_concurrency.py tests/integration/test_sdk_parity.py tests/integration/test_sessions_runner.py \
	tests/integration/test_router.py tests/integration/test_router_many_servers.py tests/integration/test_sessions_input.py \
	tests/integration/test_sessions_branches.py
test-app-role: setup
	PGSESSIONS_TEST_ROLE=app $(VENV)/bin/pytest -q $(APP_ROLE_TESTS)

# The main job: agents talking through a local replicated cluster for about 30 seconds.
# SHARDS=2 make demo: over two local clusters as shards (s1, s2); DEMO_ARGS: more options
demo: setup
	$(VENV)/bin/pgsessions demo --duration 30 $(if $(SHARDS),--shards $(SHARDS)) $(DEMO_ARGS)

# Every failover scenario against a live workload, synchronous replication: nothing may be lost;
# each again on two shards (the fault in shard s1; shard s2's sessions must see no error);
# then the point-in-time recovery drill with each backup tool (cp archive + pg_basebackup;
# pgBackRest full/diff/incr from a replica, then a delta restore; Barman from a replica);
# and the bucket-move drill: a third shard added and rebalanced onto while the workload writes
# (then with the mover killed mid-copy, at its fence and once its move flipped, and run again to resume;
# with a writer whose directory stays stale across the flips; with the source's primary crashed mid-copy).
drill: setup backup-tools
	$(VENV)/bin/pgsessions drill all --sync
	$(VENV)/bin/pgsessions drill all --sync --shards 2
	$(VENV)/bin/pgsessions drill shard-move --sync
	$(VENV)/bin/pgsessions drill shard-move --sync --kill-mover copying
	$(VENV)/bin/pgsessions drill shard-move --sync --kill-mover flipped
	$(VENV)/bin/pgsessions drill shard-move --sync --kill-mover fenced
	$(VENV)/bin/pgsessions drill shard-move --sync --variant stale-writer
	$(VENV)/bin/pgsessions drill shard-move --sync --variant source-crash
	$(VENV)/bin/pgsessions drill pitr
	$(VENV)/bin/pgsessions drill pitr --tool pgbackrest
	$(VENV)/bin/pgsessions drill pitr --tool barman --target time

# The same where Patroni moves the primary: each scenario on a fresh etcd + 3 Patroni members
# (synchronous_mode, ttl 10, loop_wait 2); about 4 minutes.
drill-patroni: setup patroni
	$(VENV)/bin/pgsessions drill --patroni all --sync

# All contenders and pgsessions with coalescing off beside them, one interleaved run (about
# 14 minutes), then the fleet (about 3); writes bench/results/latest.* and fleet-latest.*.
bench: setup
	$(VENV)/bin/pgsessions bench --save --variant coalesce_writes=false,coalesce_reads=false
	$(PY) -m bench.fleet --save

# The fleet (issue 31): 2,000 conversations from 8 processes with think time, pgsessions-routed
# then SQLAlchemySession, 20 s each after a 5 s warm-up (about 3 minutes); see bench/README.md.
bench-fleet: setup
	$(PY) -m bench.fleet

clean:
	-$(VENV)/bin/pgsessions cluster down 2>/dev/null
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info site dist
