-- The extension, as a fresh database gets it.
CREATE EXTENSION outbox;
SELECT extname, extversion FROM pg_extension WHERE extname = 'outbox';
