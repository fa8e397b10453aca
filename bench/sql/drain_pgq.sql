-- PgQ: one batch (next_batch, get_batch_events, finish_batch) in one transaction,
-- consumer :prefix || client id (-D prefix=c4_ ...); see bench_pgq_drain in setup.sql.
-- pgbench -M prepared script, run by bench/run.
SELECT bench_pgq_drain('bench_drain', :prefix || :client_id);
