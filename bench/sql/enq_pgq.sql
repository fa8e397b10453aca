-- PgQ: pgq.insert_event, 1 per transaction (the payload as text, as PgQ stores it).
-- pgbench -M prepared script, run by bench/run.
\set id random(1, 1000000000)
SELECT pgq.insert_event('bench_enq', 'order', ('{"order_id": ' || :id || ', "customer": "customer-' || :id || '", "status": "placed", "currency": "EUR", "total": 123.45, "lines": [{"sku": "SKU-10001", "qty": 2, "price": 19.90}, {"sku": "SKU-20002", "qty": 1, "price": 83.65}], "channel": "web"}'));
