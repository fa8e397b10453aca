# ALTER EXTENSION outbox UPDATE from every released version gives exactly
# the schema that CREATE EXTENSION gives: the same objects with the same
# definitions, owners, privileges, extension membership and dump settings.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade_schema');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;

# Everything of the extension that a schema comparison should see, one
# line per object, sorted.
my $describe = q{
WITH ext AS (SELECT oid, extversion, extconfig, extcondition FROM pg_extension WHERE extname = 'outbox'),
members AS (
	SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS what, d.classid, d.objid
	  FROM pg_depend d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
)
SELECT line FROM (
	SELECT 'version ' || extversion AS line FROM ext
	UNION ALL
	SELECT 'member ' || what FROM members
	UNION ALL
	SELECT 'config ' || c::regclass::text || ' ' || coalesce(cond, '')
	  FROM ext, unnest(extconfig, extcondition) AS u(c, cond)
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure::text || ' ' || pg_get_functiondef(p.oid)
	       || ' acl ' || coalesce(p.proacl::text, '') || ' owner ' || pg_get_userbyid(p.proowner)
	  FROM pg_proc p WHERE p.pronamespace = 'outbox'::regnamespace AND p.prokind <> 'a'
	UNION ALL
	SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || c.relpersistence::text
	       || ' acl ' || coalesce(c.relacl::text, '') || ' owner ' || pg_get_userbyid(c.relowner)
	       || ' partition ' || coalesce(pg_get_expr(c.relpartbound, c.oid), '')
	       || ' key ' || coalesce(pg_get_partkeydef(c.oid), '')
	       || ' options ' || coalesce(c.reloptions::text, '')
	  FROM pg_class c WHERE c.relnamespace = 'outbox'::regnamespace
	UNION ALL
	SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	       || ' notnull ' || a.attnotnull || ' default ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
	       || ' collation ' || a.attcollation
	  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	 WHERE c.relnamespace = 'outbox'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid)
	  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'outbox'::regnamespace
	UNION ALL
	SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
	  FROM pg_constraint WHERE connamespace = 'outbox'::regnamespace
	UNION ALL
	SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
	  FROM pg_class c WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind = 'v'
	UNION ALL
	SELECT 'sequence ' || s.seqrelid::regclass::text || ' ' || s.seqtypid::regtype::text || ' '
	       || s.seqstart || ' ' || s.seqmin || ' ' || s.seqmax || ' ' || s.seqincrement || ' ' || s.seqcycle
	  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = 'outbox'::regnamespace
	UNION ALL
	SELECT 'trigger ' || pg_get_triggerdef(t.oid)
	  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	 WHERE c.relnamespace = 'outbox'::regnamespace AND NOT t.tgisinternal
	UNION ALL
	SELECT 'schema acl ' || coalesce(nspacl::text, '') || ' owner ' || pg_get_userbyid(nspowner)
	  FROM pg_namespace WHERE nspname = 'outbox'
) x ORDER BY line
};

my $default = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'outbox'");
my @versions = split /\n/, $node->safe_psql('postgres',
	"SELECT version FROM pg_available_extension_versions WHERE name = 'outbox'"
	  . " AND version <> '$default' ORDER BY version");
ok(scalar(@versions) >= 1, "older versions to upgrade from: @versions");

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION outbox');
my $want = $node->safe_psql('fresh', $describe);
like($want, qr/^version \Q$default\E$/m, "CREATE EXTENSION installs $default");

foreach my $v (@versions)
{
	my $db = "from_$v";
	$db =~ s/\W/_/g;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION outbox VERSION '$v'");
	$node->safe_psql($db, 'ALTER EXTENSION outbox UPDATE');
	my $got = $node->safe_psql($db, $describe);
	if ($got eq $want)
	{
		pass("ALTER EXTENSION UPDATE from $v gives what CREATE EXTENSION gives");
	}
	else
	{
		my %w = map { $_ => 1 } split /\n/, $want;
		my %g = map { $_ => 1 } split /\n/, $got;
		my @only_update = grep { !$w{$_} } split /\n/, $got;
		my @only_create = grep { !$g{$_} } split /\n/, $want;
		fail("ALTER EXTENSION UPDATE from $v gives what CREATE EXTENSION gives");
		diag("only after UPDATE: $_") foreach @only_update;
		diag("only after CREATE: $_") foreach @only_create;
	}
}

$node->stop;
done_testing();
