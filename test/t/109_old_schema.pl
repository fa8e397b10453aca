# This library with a database still at extension version 1.0 (new
# binaries installed, ALTER EXTENSION UPDATE not run yet): every call that
# needs what 1.0 lacks refuses with a clear error and a hint to update, the
# worker logs the same and keeps running, nothing is lost or misread, and
# after ALTER EXTENSION outbox UPDATE everything carries on.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('old_schema');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'outbox'\noutbox.naptime = '100ms'\n");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', "CREATE EXTENSION outbox VERSION '1.0'");
my $worker = wait_for_worker($node, 'app', 'a worker serves the 1.0 database');

$node->safe_psql('app', q{
	SELECT outbox.subscribe('s', ARRAY['t'], max_attempts => 1, lease => '1 second');
	SELECT outbox.enqueue('t', '{"n": 1}');
});

my ($ret, $out, $err) = $node->psql('app',
	"\\set VERBOSITY verbose\nSELECT * FROM outbox.claim('s')");
isnt($ret, 0, 'claim refuses');
like($err, qr/55000: the outbox library needs version 1\.1 of the extension, but this database has version 1\.0/,
	'with SQLSTATE 55000, naming both versions');
like($err, qr/HINT:  Run ALTER EXTENSION outbox UPDATE\./, 'and a hint to update');

my $log_offset = -s $node->logfile;
ok( $node->wait_for_log(qr/outbox library needs version 1\.1 of the extension/, $log_offset),
	'the worker logs the same error');
is(join(',', worker_pids($node, 'app')), $worker, 'and keeps running');

$node->safe_psql('app', 'ALTER EXTENSION outbox UPDATE');
is($node->safe_psql('app', "SELECT payload->>'n' FROM outbox.claim('s')"),
	'1', 'after the update the event enqueued before is claimed');
ok( $node->poll_query_until(
		'app', "SELECT last_error FROM outbox.dead_letters WHERE subscription = 's'",
		'lease expired'),
	'and the worker returns its lease');
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');

$node->stop;
done_testing();
