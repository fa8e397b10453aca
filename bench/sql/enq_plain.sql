-- The ceiling: a plain INSERT of the same row into an indexed table, 1 per transaction.
-- pgbench -M prepared script, run by bench/run.
\set id random(1, 1000000000)
INSERT INTO plain (topic, key, payload, created_at) VALUES ('orders', :id, ('{"order_id": ' || :id || ', "customer": "customer-' || :id || '", "status": "placed", "currency": "EUR", "total": 123.45, "lines": [{"sku": "SKU-10001", "qty": 2, "price": 19.90}, {"sku": "SKU-20002", "qty": 1, "price": 83.65}], "channel": "web"}')::jsonb, now());
