-- The ceiling for enqueue_many: one multi-row INSERT of 100 rows per transaction.
-- pgbench -M prepared script, run by bench/run.
\set id random(1, 1000000000)
INSERT INTO plain (topic, key, payload, created_at)
SELECT 'orders', :id + i, ('{"order_id": ' || :id + i || ', "customer": "customer-' || :id + i || '", "status": "placed", "currency": "EUR", "total": 123.45, "lines": [{"sku": "SKU-10001", "qty": 2, "price": 19.90}, {"sku": "SKU-20002", "qty": 1, "price": 83.65}], "channel": "web"}')::jsonb, now()
  FROM generate_series(1, 100) i;
