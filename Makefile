# PGXS build of the idempotent extension.
#
#   make              build
#   make install      install into the PostgreSQL that pg_config names
#   make test         install what is missing, build with -Werror, install, run every suite
#   make demo         payment stream through idem_apply beside a naive consumer
#   make bench        cost per call against the bare statement, growth, pgbench, batches
#   make bench-purge  purge rate, and call latency while a purge runs
#   make bench-profile the paths of make bench in CPU instructions (callgrind), repeatable
#   make installcheck run the suites against a server that is already running

EXTENSION = idempotent
MODULE_big = idempotent
OBJS = src/idempotent.o src/settings.o src/policy.o src/scope.o src/apply.o src/ledger.o src/key_locks.o src/statement.o src/admin.o src/worker.o src/stats.o src/batch.o src/lease.o
DATA = idempotent--1.0.sql idempotent--1.0--1.1.sql idempotent--1.1--1.2.sql
PGFILEDESC = "idempotent - exactly-once effects for message consumers"

# pg_regress: sql/NAME.sql against expected/NAME.out
REGRESS = setup outcomes_once outcomes_newer outcomes_next outcomes_upsert \
	claim parameters results fingerprint identity errors privileges scopes plpgsql retention batch leases
REGRESS_OPTS = --load-extension=idempotent

# isolation specs: test/isolation/specs/NAME.spec against test/isolation/expected/NAME.out
ISOLATION = once_commit once_rollback wait_off newer_vs_stale next_order repeatable_read \
	serializable_skew ledger_invalidation manual_delete savepoint statement_wait upsert_race claim_race three_sessions deadlock \
	purge_race reindex_swap reindex_new_keys lock_timeout lease_race lease_takeover lease_complete_vs_takeover \
	batch_overlap batch_wait_off batch_vs_single get_while_writing holder_aborts scope_keys lease_repeatable_read
ISOLATION_OPTS = --inputdir=test/isolation --load-extension=idempotent

# TAP tests (PostgreSQL::Test::Cluster): crashes, restarts
TAP_TESTS = 1
PROVE_TESTS ?= test/t/*.pl

EXTRA_CLEAN = results output_iso tmp_check regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object sees the shared structs: rebuild them all when a header changes
$(OBJS): $(wildcard src/*.h)

.PHONY: test demo bench bench-purge bench-profile deb
test:
	scripts/run-tests.sh

demo:
	scripts/demo.sh

bench:
	scripts/bench.sh

bench-purge:
	scripts/bench-purge.sh

bench-profile:
	scripts/bench-profile.sh

deb:
	scripts/deb.sh
