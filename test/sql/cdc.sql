-- create_cdc_publication (issue 12): the publication Debezium reads the
-- events through.  It publishes outbox.event as itself (not its buckets),
-- inserts only, and only the rotating buckets (not event_kept's copies),
-- and outbox.cdc_resend, where cdc_resend() puts retained events again.
-- The owner only: 42501 for everyone else.  What it carries is proven end
-- to end with a real Debezium and Kafka by t/150_kafka_cdc.pl.

\set VERBOSITY terse

CREATE FUNCTION pg_temp.try(sql text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE ROLE regress_outbox_cdc_nobody;
CREATE ROLE regress_outbox_cdc_producer;
SELECT outbox.grant_produce('regress_outbox_cdc_producer');

-- not the owner: refused, with or without other grants
SET ROLE regress_outbox_cdc_nobody;
SELECT pg_temp.try($$SELECT outbox.create_cdc_publication()$$);
SELECT pg_temp.try($$SELECT outbox.cdc_resend(0)$$);
SET ROLE regress_outbox_cdc_producer;
SELECT pg_temp.try($$SELECT outbox.create_cdc_publication()$$);
SELECT pg_temp.try($$SELECT outbox.cdc_resend(0)$$);
SELECT pg_temp.try($$INSERT INTO outbox.cdc_resend VALUES (1, 0, 't', NULL, '{}', NULL, NULL, now())$$);
-- nor can a producer write events around enqueue (what Debezium reads is
-- written by enqueue only)
SELECT pg_temp.try($$INSERT INTO outbox.event VALUES (1, 0, 't', NULL, '{}', NULL, NULL, now())$$);
SELECT pg_temp.try($$INSERT INTO outbox.event_0 VALUES (1, 0, 't', NULL, '{}', NULL, NULL, now())$$);
RESET ROLE;
SELECT count(*) AS publications FROM pg_publication;

SELECT pg_temp.try($$SELECT outbox.create_cdc_publication(NULL)$$);

-- the owner: the default name, then another (without the warning that
-- this cluster's wal_level is not logical)
SET client_min_messages = error;
SELECT outbox.create_cdc_publication();
SELECT outbox.create_cdc_publication('Kafka Events');
RESET client_min_messages;
SELECT pg_temp.try($$SELECT outbox.create_cdc_publication()$$);
SELECT pubname, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot
  FROM pg_publication ORDER BY pubname;
-- the event table as the parent, with the rotating buckets only, and the
-- table of re-sent events
SELECT pubname, schemaname, tablename, rowfilter, attnames
  FROM pg_publication_tables ORDER BY pubname, tablename;

-- cdc_resend: the retained events in a range, each once (its bucket's row,
-- not also its kept copy), in id order; the table stays empty
SELECT pg_temp.try($$SELECT outbox.cdc_resend(NULL)$$);
CREATE TEMP TABLE cdc_ids AS
	SELECT outbox.enqueue('cdc.t', jsonb_build_object('i', i)) AS id FROM generate_series(1, 3) i;
INSERT INTO outbox.event_kept SELECT id, 4, topic, key, payload, headers, deliver_at, enqueued_at
  FROM outbox.event WHERE id = (SELECT min(id) FROM cdc_ids);
SELECT outbox.cdc_resend((SELECT min(id) FROM cdc_ids)) AS resent;
SELECT outbox.cdc_resend((SELECT min(id) FROM cdc_ids), (SELECT min(id) FROM cdc_ids)) AS resent;
SELECT outbox.cdc_resend((SELECT max(id) FROM cdc_ids) + 1) AS resent;
SELECT count(*) AS left_in_cdc_resend FROM outbox.cdc_resend;
DELETE FROM outbox.event_kept WHERE id IN (SELECT id FROM cdc_ids);

DROP PUBLICATION outbox_cdc;
DROP PUBLICATION "Kafka Events";
SELECT outbox.revoke_produce('regress_outbox_cdc_producer');
DROP ROLE regress_outbox_cdc_nobody;
DROP ROLE regress_outbox_cdc_producer;
