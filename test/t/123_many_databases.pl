
# More than 128 databases (issue 8, fault 15): the launcher used to stop
# reading pg_database at 128 and serve none of the rest.  Slots are for
# databases that have the extension; those without it give theirs back
# after their probe, so databases past the 128th that have it are served:
# their leases expire and their consumers are notified.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('many_databases');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;

# 130 databases besides postgres, none with outbox yet
my $n = 130;
$node->safe_psql('postgres',
	join('', map { sprintf("CREATE DATABASE d%03d;\n", $_) } 1 .. $n));
is($node->safe_psql('postgres',
		'SELECT count(*) FROM pg_database WHERE datallowconn AND NOT datistemplate'),
	$n + 1, "$n databases besides postgres");

# the last two get the extension, a subscription and a claimed lease
my @dbs = (sprintf('d%03d', $n - 1), sprintf('d%03d', $n));
for my $db (@dbs)
{
	$node->safe_psql(
		$db, q{
		CREATE EXTENSION outbox;
		SELECT outbox.subscribe('s', ARRAY['t'], lease => '1 second', max_attempts => 1);
		SELECT outbox.enqueue('t', '{}');
	});
	is($node->safe_psql($db, "SELECT count(*) FROM outbox.claim('s')"),
		'1', "$db: a delivery is claimed");
}

for my $db (@dbs)
{
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity"
			  . " WHERE backend_type = 'outbox worker' AND datname = '$db'"),
		"$db: a worker serves it");
	ok( $node->poll_query_until(
			$db,
			"SELECT last_error FROM outbox.dead_letters WHERE subscription = 's'",
			'lease expired'),
		"$db: the expired lease came back as a dead letter");
}

# a consumer of the last database is notified of a commit
my $db = $dbs[-1];
my $listener = $node->background_psql($db);
$listener->query_safe('LISTEN "outbox.s"');
$node->safe_psql($db, "SELECT outbox.enqueue('t', '{}')");
my $notified = 0;
for (1 .. 300)
{
	my ($out) = $listener->query('SELECT 1');
	# psql prints notifications after a query's result
	if (($out // '') =~ /Asynchronous notification "outbox\.s"/)
	{
		$notified = 1;
		last;
	}
	usleep(100_000);
}
ok($notified, "$db: a LISTENing consumer is notified");
$listener->quit;

done_testing();
