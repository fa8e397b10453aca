# outbox: PostgreSQL extension built with PGXS.
MODULE_big = outbox
OBJS = \
	src/outbox.o \
	src/snapshot.o \
	src/subscription.o \
	src/enqueue.o \
	src/claim.o \
	src/settle.o \
	src/chain.o \
	src/stats.o \
	src/shmem.o \
	src/launcher.o \
	src/worker.o \
	src/maintain.o \
	src/notify.o \
	src/lease.o \
	src/retention.o \
	src/tally.o \
	src/lifecycle.o \
	src/restore.o \
	src/layout.o \
	src/status.o \
	src/wait.o

EXTENSION = outbox
# 1.0 is released and never changes; every later change goes into an
# upgrade script, and the install script of the current version is 1.0 plus
# the upgrades, so CREATE EXTENSION and ALTER EXTENSION UPDATE cannot differ.
DATA = sql/outbox--1.0.sql sql/outbox--1.0--1.1.sql
DATA_built = sql/outbox--1.1.sql
PGFILEDESC = "outbox - transactional event delivery"

# pg_regress inputs live in test/sql, expected output in expected/.
REGRESS = setup subscribe enqueue claim settle ordering dedup privileges errors semantics limits read_only layout give_back enqueue_many event_status claim_wait cdc
# PG15's pg_regress reads expected output from <outputdir>/expected, so the
# output goes to the top directory (results/, ignored by git).
REGRESS_OPTS = --inputdir=test
ISOLATION = claim_concurrency claim_rollback dedup_race ordering_race unsubscribe_race isolation_levels held_claim ordered_rollback truncate_race ordered_waiting ordered_cache give_back_race claim_wait_race
ISOLATION_OPTS = --inputdir=test --outputdir=.

# no JIT bitcode: nothing here is worth inlining, and it needs clang
override with_llvm = no

# test/run builds with OUTBOX_STRICT=1: every warning is an error.  PG's own
# headers trip -Wunused-parameter (ilist.h, bufpage.h, fmgr.h) and
# -Wsign-compare (array.h), and callbacks must take parameters they do not
# use, so exactly those two are left out.  A plain "make" adds nothing, so
# other compilers and PG versions still build.
ifdef OUTBOX_STRICT
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Werror
endif

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)

# claim_wait_race drives its waiting claim through dblink, from contrib;
# an installation without contrib (test/pg16.sh's) runs the other specs,
# and t/140 still covers claim(..., wait)
ifeq ($(wildcard $(shell $(PG_CONFIG) --sharedir)/extension/dblink.control),)
ISOLATION := $(filter-out claim_wait_race,$(ISOLATION))
$(info claim_wait_race skipped: no dblink in this PostgreSQL installation)
endif
include $(PGXS)

# every object depends on the shared headers (PGXS tracks no dependencies),
# and on the flags it was compiled with, so that a strict build recompiles
# what a plain one built
$(OBJS): $(wildcard src/*.h) .cflags
.cflags: FORCE
	@echo '$(CFLAGS) $(CPPFLAGS)' | cmp -s - $@ || echo '$(CFLAGS) $(CPPFLAGS)' > $@
.PHONY: FORCE

EXTRA_CLEAN = .cflags

sql/outbox--1.1.sql: sql/outbox--1.0.sql sql/outbox--1.0--1.1.sql
	{ echo '-- outbox 1.1: generated from outbox--1.0.sql and outbox--1.0--1.1.sql; do not edit.'; \
	  echo '\\echo Use "CREATE EXTENSION outbox" to load this file. \\quit'; \
	  grep -hv '^\\echo ' $^; } > $@
