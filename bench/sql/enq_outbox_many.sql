-- outbox.enqueue_many, 100 events per call and transaction (the same rows
-- as enq_plain100.sql).
-- pgbench -M prepared script, run by bench/run.
\set id random(1, 1000000000)
SELECT cardinality(outbox.enqueue_many(:topic,
  ARRAY(SELECT ('{"order_id": ' || :id + i || ', "customer": "customer-' || :id + i || '", "status": "placed", "currency": "EUR", "total": 123.45, "lines": [{"sku": "SKU-10001", "qty": 2, "price": 19.90}, {"sku": "SKU-20002", "qty": 1, "price": 83.65}], "channel": "web"}')::jsonb
          FROM generate_series(1, 100) i),
  keys => ARRAY(SELECT (:id + i)::text FROM generate_series(1, 100) i)));
