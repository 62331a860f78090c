
# 034_dump_restore.pl
#
# Backups that keep every key, and restores that lose none (README, "Backup
# and restore").  pg_dump dumps the ledger's rows with the extension, so the
# role that runs it must read the ledger; the ledger holds every role's stored
# results, so the extension grants that to nobody.
#  (a) A database owner that is not a superuser cannot dump: pg_dump fails
#      with "permission denied for table idem_ledger" and exit status 1
#      (ordinary roles, the owner included, have no privilege on the ledger).
#      Leaving the ledger's rows out makes pg_dump succeed and every key apply
#      again after the restore: the README forbids it, and this shows why.
#  (b) The documented ways through: a backup role in pg_read_all_data, or
#      SELECT on the ledger granted to the owner by a superuser.  Their dumps
#      restore row for row; a redelivered key is a duplicate and runs nothing.
#  (c) A restore into a database whose extension lives in another schema:
#      the dump's CREATE EXTENSION IF NOT EXISTS does nothing there and its
#      COPY public.idem_ledger fails.  psql without ON_ERROR_STOP goes on and
#      exits 0 with every key lost; psql -1 -v ON_ERROR_STOP=1 and
#      pg_restore --single-transaction stop and restore nothing.
#  (d) The documented way through for (c): a staging table named as in the
#      dump, the restore from a list without the grants on the extension's
#      objects, INSERT ... SELECT into the target's ledger.  Every key keeps
#      its version, result and fingerprint, redeliveries are duplicates and
#      run nothing; a key the target already holds stops the INSERT (23505)
#      and loses nothing.
# The commands of (b), (c) and (d) are run as the README shows them.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump_restore');
$node->init;
$node->append_conf('postgresql.conf', "log_statement = none\n");
$node->start;

my $dir = $node->basedir;

# Scopes came with 1.2: with them, the same key in a second scope is dumped
# and restored as a key of its own.
my $scopes = $node->safe_psql('postgres',
	q{SELECT default_version::numeric >= 1.2 FROM pg_available_extensions WHERE name = 'idempotent'})
  eq 't';

$node->safe_psql('postgres', q{
CREATE ROLE regress_owner LOGIN;                      -- owns the database, not a superuser
CREATE ROLE regress_app LOGIN;                        -- the consumer
CREATE ROLE regress_backup LOGIN IN ROLE pg_read_all_data;
CREATE DATABASE src OWNER regress_owner;
});
# The extension is not trusted: a superuser creates it; the owner creates
# the effect table and lets the consumer write it.
$node->safe_psql('src', q{
CREATE EXTENSION idempotent;
GRANT EXECUTE ON FUNCTION idem_apply(text, bigint, text, "any"),
                          idem_apply_next(text, bigint, text, "any"),
                          idem_claim(text, bigint, text)
    TO regress_app;
SET ROLE regress_owner;
CREATE TABLE effects (k text NOT NULL, v int NOT NULL);
GRANT SELECT, INSERT ON effects TO regress_app;
});

my $insert = q{INSERT INTO effects (k, v) VALUES ($1, $2) RETURNING k, v};

# One call by the consumer, through the extension in schema $opt{schema}
# (default public): status|applied|version|previous_version|rows|result.
sub call
{
	my ($db, $func, $key, $version, $v, %opt) = @_;
	my $ver   = defined $version ? $version : 'NULL';
	my $sch   = $opt{schema} // 'public';
	my $scope = $opt{scope} ? "SET idempotent.scope = '$opt{scope}'; " : '';
	return $node->safe_psql($db,
		    "SET ROLE regress_app; $scope"
		  . "SELECT status, applied, version, previous_version, rows, result "
		  . "FROM $sch.$func('$key', $ver, \$s\$$insert\$s\$, '$key'::text, $v)");
}

sub claim
{
	my ($db, $key, %opt) = @_;
	my $sch = $opt{schema} // 'public';
	return $node->safe_psql($db,
		"SET ROLE regress_app; SELECT status, applied, version, previous_version, rows, result "
		  . "FROM $sch.idem_claim('$key')");
}

sub effects
{
	my ($db) = @_;
	return $node->safe_psql($db,
		q{SELECT coalesce(string_agg(k || '=' || v, ',' ORDER BY k, v), '') FROM effects});
}

# Every ledger row, every column, as text (whatever columns this version has).
sub ledger
{
	my ($db, $schema) = @_;
	$schema //= 'public';
	return $node->safe_psql($db,
		"SELECT coalesce(string_agg(l::text, E'\\n' ORDER BY l::text), '') FROM $schema.idem_ledger AS l");
}

# The keys the source database holds.
is(call('src', 'idem_apply', 'once-1', undef, 1),
	'applied|t|||1|[{"k": "once-1", "v": 1}]', 'src: once key applied');
is(call('src', 'idem_apply', 'newer', 5, 50),
	'applied|t|5||1|[{"k": "newer", "v": 50}]', 'src: newer key applied at version 5');
is(call('src', 'idem_apply_next', 'seq', $_, 100 + $_),
	"applied|t|$_|" . ($_ == 1 ? '' : $_ - 1) . qq(|1|[{"k": "seq", "v": @{[100 + $_]}}]),
	"src: next key applied at version $_")
  for 1 .. 2;
is(claim('src', 'claimed'), 'applied|t||||', 'src: claim recorded');
my $src_effects = 'newer=50,once-1=1,seq=101,seq=102';
if ($scopes)
{
	is(call('src', 'idem_apply', 'once-1', undef, 2, scope => 'regress_app'),
		'applied|t|||1|[{"k": "once-1", "v": 2}]',
		'src: the same key in scope regress_app is a key of its own');
	$src_effects = 'newer=50,once-1=1,once-1=2,seq=101,seq=102';
}
is(effects('src'), $src_effects, 'src: the effects');
my $src_ledger = ledger('src');
my $nkeys      = $node->safe_psql('src', 'SELECT count(*) FROM idem_ledger');

# What every restored database must answer: redeliveries of every key are
# duplicates (or stale) and run nothing; the ledger is the source's.
sub check_restored
{
	my ($db, %opt) = @_;
	my $sch = $opt{schema} // 'public';
	is(ledger($db, $sch), $src_ledger, "$db: the ledger is the source's, row for row");
	is(effects($db), $src_effects, "$db: the effects are the source's");
	is(call($db, 'idem_apply', 'once-1', undef, 1, schema => $sch),
		'duplicate|f|||1|[{"k": "once-1", "v": 1}]',
		"$db: the redelivered once key is a duplicate with its original result");
	is(call($db, 'idem_apply', 'newer', 5, 50, schema => $sch),
		'duplicate|f|5|5|1|[{"k": "newer", "v": 50}]', "$db: newer key at 5 is a duplicate");
	is(call($db, 'idem_apply', 'newer', 4, 40, schema => $sch),
		'stale|f|5|5||', "$db: newer key at 4 is stale");
	is(call($db, 'idem_apply_next', 'seq', 2, 102, schema => $sch),
		'duplicate|f|2|2|1|[{"k": "seq", "v": 102}]', "$db: next key at 2 is a duplicate");
	is(claim($db, 'claimed', schema => $sch), 'duplicate|f||||',
		"$db: the claimed key is a duplicate");
	if ($scopes)
	{
		is(call($db, 'idem_apply', 'once-1', undef, 2, schema => $sch, scope => 'regress_app'),
			'duplicate|f|||1|[{"k": "once-1", "v": 2}]',
			"$db: the key in scope regress_app is a duplicate in its scope");
	}
	is(effects($db), $src_effects, "$db: no effect ran a second time");
	is(ledger($db, $sch), $src_ledger, "$db: the redeliveries wrote nothing");
	return;
}

###########################################################################
# (a) the owner cannot dump, and nobody was quietly given the ledger

note 'a database owner that is not a superuser';

is( $node->safe_psql('src',
		q{SELECT string_agg(r || ':' || has_table_privilege(r, 'idem_ledger', 'SELECT'), ',' ORDER BY r)
		  FROM unnest(ARRAY['public', 'regress_app', 'regress_owner']) AS r}),
	'public:false,regress_app:false,regress_owner:false',
	'src: neither PUBLIC, the consumer nor the owner may read the ledger');
{
	my ($rc, $out, $err) = $node->psql('src', 'SET ROLE regress_owner; SELECT count(*) FROM idem_ledger');
	like($err, qr/permission denied for table idem_ledger/,
		'src: the owner reading the ledger gets permission denied');
}

$node->command_checks_all(
	[ 'pg_dump', '-U', 'regress_owner', '-Fc', '-f', "$dir/owner_denied.dump", 'src' ],
	1,
	[qr/^$/],
	[qr/permission denied for table idem_ledger/],
	'the owner\'s pg_dump fails loudly: permission denied for the ledger, exit status 1');

# Leaving the ledger out is no way through: the dump succeeds, the keys are gone.
$node->command_ok(
	[ 'pg_dump', '-U', 'regress_owner', '-Fc', '--exclude-table-data=idem_ledger',
	  '-f', "$dir/no_ledger.dump", 'src' ],
	'pg_dump --exclude-table-data=idem_ledger by the owner succeeds');
$node->safe_psql('postgres', 'CREATE DATABASE dst_no_ledger');
$node->command_ok(
	[ 'pg_restore', '--single-transaction', '-d', 'dst_no_ledger', "$dir/no_ledger.dump" ],
	'and restores without an error');
is($node->safe_psql('dst_no_ledger', 'SELECT count(*) FROM idem_ledger'), '0',
	'dst_no_ledger: but the ledger is empty');
is(call('dst_no_ledger', 'idem_apply', 'once-1', undef, 1),
	'applied|t|||1|[{"k": "once-1", "v": 1}]',
	'dst_no_ledger: and a redelivered key applies a second time');

###########################################################################
# (b) the documented ways through

note 'a backup role in pg_read_all_data';

$node->command_ok(
	[ 'pg_dump', '-U', 'regress_backup', '-Fc', '-f', "$dir/backup.dump", 'src' ],
	'pg_dump -Fc by a role in pg_read_all_data');
$node->safe_psql('postgres', 'CREATE DATABASE dst_backup');
$node->command_ok(
	[ 'pg_restore', '--single-transaction', '-d', 'dst_backup', "$dir/backup.dump" ],
	'pg_restore --single-transaction of that dump, as a superuser');
check_restored('dst_backup');

note 'SELECT on the ledger granted to the owner';

$node->safe_psql('src', 'GRANT SELECT ON idem_ledger TO regress_owner');
$node->command_ok(
	[ 'pg_dump', '-U', 'regress_owner', '-Fc', '-f', "$dir/app.dump", 'src' ],
	'pg_dump -Fc by the owner once a superuser granted it SELECT on the ledger');
is( $node->safe_psql('src',
		q{SELECT has_table_privilege('regress_app', 'idem_ledger', 'SELECT')}),
	'f', 'src: the consumer still may not read the ledger');
$node->safe_psql('postgres', 'CREATE DATABASE dst_owner');
$node->command_ok(
	[ 'pg_restore', '--single-transaction', '-d', 'dst_owner', "$dir/app.dump" ],
	'pg_restore --single-transaction of the owner\'s dump');
check_restored('dst_owner');
is( $node->safe_psql('dst_owner',
		q{SELECT has_table_privilege('regress_owner', 'idem_ledger', 'SELECT'),
		         has_table_privilege('regress_app', 'idem_ledger', 'SELECT')}),
	't|f', 'dst_owner: the grant to the owner came along, and nothing more');

###########################################################################
# (c) a restore into a database whose extension lives in schema ops

note 'a restore into a database whose extension lives in another schema';

sub target_db
{
	my ($db) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE SCHEMA ops; CREATE EXTENSION idempotent SCHEMA ops');
	return;
}

my $plain = "$dir/app.sql";
$node->command_ok([ 'pg_restore', '-f', $plain, "$dir/app.dump" ],
	'the dump as a plain script');
like(slurp_file($plain), qr/^COPY public\.idem_ledger \(/m,
	'the script copies the ledger into the schema the dump was made in');

# psql without ON_ERROR_STOP: it says so, goes on, and succeeds without keys
target_db('dst_psql');
$node->command_checks_all(
	[ 'psql', '-X', '-q', '-d', 'dst_psql', '-f', $plain ],
	0,
	[qr/.*/s],
	[qr/relation "public\.idem_ledger" does not exist/],
	'psql without ON_ERROR_STOP reports the ledger missing, and exits 0');
is($node->safe_psql('dst_psql', 'SELECT count(*) FROM ops.idem_ledger'), '0',
	'dst_psql: every key is lost');
is(effects('dst_psql'), $src_effects, 'dst_psql: while the effects are back');

# psql -1 -v ON_ERROR_STOP=1 stops at the COPY and restores nothing
target_db('dst_psql_stop');
$node->command_checks_all(
	[ 'psql', '-X', '-q', '-1', '-v', 'ON_ERROR_STOP=1', '-d', 'dst_psql_stop', '-f', $plain ],
	3,
	[qr/.*/s],
	[qr/relation "public\.idem_ledger" does not exist/],
	'psql -1 -v ON_ERROR_STOP=1 stops at the ledger (exit status 3)');
is( $node->safe_psql('dst_psql_stop',
		q{SELECT to_regclass('public.effects') IS NULL AND NOT EXISTS (SELECT FROM ops.idem_ledger)}),
	't', 'dst_psql_stop: and restored nothing');

# pg_restore --single-transaction likewise; the database is then restored
# the documented way (d)
target_db('dst_ops');
$node->command_checks_all(
	[ 'pg_restore', '--single-transaction', '-d', 'dst_ops', "$dir/app.dump" ],
	1,
	[qr/^$/],
	[qr/relation "public\.idem_ledger" does not exist/],
	'pg_restore --single-transaction stops at the ledger (exit status 1)');
is( $node->safe_psql('dst_ops',
		q{SELECT to_regclass('public.effects') IS NULL AND NOT EXISTS (SELECT FROM ops.idem_ledger)}),
	't', 'dst_ops: and restored nothing');

###########################################################################
# (d) the documented way through: a staging table, a list, INSERT ... SELECT

# The README's commands, for the database $db; app.dump in the current
# directory.
sub staged_restore
{
	my ($db) = @_;
	return
	    "set -e -o pipefail; cd '$dir'\n"
	  . "psql -X -v ON_ERROR_STOP=1 -d $db -c 'CREATE TABLE public.idem_ledger (LIKE ops.idem_ledger INCLUDING DEFAULTS)'\n"
	  . "pg_restore -l app.dump | grep -v -E ' ACL public [A-Z]+ idem_' > app.list\n"
	  . "pg_restore --single-transaction -L app.list -d $db app.dump\n"
	  . "psql -X -1 -v ON_ERROR_STOP=1 -d $db \\\n"
	  . "  -c 'INSERT INTO ops.idem_ledger SELECT * FROM public.idem_ledger' \\\n"
	  . "  -c 'DROP TABLE public.idem_ledger'\n";
}

$node->command_ok([ 'bash', '-c', staged_restore('dst_ops') ],
	'dst_ops: the staged restore of the README');
like(slurp_file("$dir/app.list"), qr/^\d+; \d+ \d+ TABLE DATA public idem_ledger /m,
	'the list keeps the ledger\'s rows');
unlike(slurp_file("$dir/app.list"), qr/ ACL public [A-Z]+ idem_/,
	'and leaves out the grants on the extension\'s objects');
like(slurp_file("$dir/app.list"), qr/^\d+; \d+ \d+ ACL public TABLE effects /m,
	'but not the grants on the application\'s tables');
is($node->safe_psql('dst_ops', q{SELECT to_regclass('public.idem_ledger') IS NULL}),
	't', 'dst_ops: the staging table is gone');
is($node->safe_psql('dst_ops', 'SELECT count(*) FROM ops.idem_ledger'), $nkeys,
	'dst_ops: every key is in the ledger of schema ops');
# the grants the list left out, given again on the target's schema and functions
$node->safe_psql('dst_ops', q{
GRANT USAGE ON SCHEMA ops TO regress_app;
GRANT EXECUTE ON FUNCTION ops.idem_apply(text, bigint, text, "any"),
                          ops.idem_apply_next(text, bigint, text, "any"),
                          ops.idem_claim(text, bigint, text)
    TO regress_app;
});
check_restored('dst_ops', schema => 'ops');
is(call('dst_ops', 'idem_apply', 'after', undef, 7, schema => 'ops'),
	'applied|t|||1|[{"k": "after", "v": 7}]', 'dst_ops: a new key applies');

# A key the target already holds: the INSERT stops with 23505, the target's
# ledger is unchanged, and every key of the dump waits in the staging table.
target_db('dst_conflict');
$node->safe_psql('dst_conflict', q{SELECT status FROM ops.idem_claim('claimed')});
my $conflict_ledger = ledger('dst_conflict', 'ops');
$node->command_checks_all(
	[ 'bash', '-c', staged_restore('dst_conflict') ],
	1,
	[qr/.*/s],
	[qr/duplicate key value violates unique constraint/],
	'dst_conflict: a key the target already holds stops the INSERT');
is(ledger('dst_conflict', 'ops'), $conflict_ledger,
	'dst_conflict: the target\'s ledger is unchanged');
is($node->safe_psql('dst_conflict', 'SELECT count(*) FROM public.idem_ledger'), $nkeys,
	'dst_conflict: every key of the dump is kept in the staging table');

$node->stop;
done_testing();
