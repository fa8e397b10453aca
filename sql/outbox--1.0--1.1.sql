-- outbox 1.0 -> 1.1.  Applied by ALTER EXTENSION outbox UPDATE, and part of
-- the 1.1 install script (the Makefile builds outbox--1.1.sql as 1.0 plus
-- this file), so both ways give the same schema.  Each change below says
-- which fault or feature it is for.

\echo Use "ALTER EXTENSION outbox UPDATE" to load this file. \quit
