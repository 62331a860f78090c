
# 030_dump_upgrade.pl
#
# Keys survive the ways a database moves on:
#  (a) ALTER EXTENSION idempotent UPDATE from 1.0 to 1.1: keys recorded under
#      1.0 (every policy, with their rows, results and fingerprints) are still
#      duplicates, stale or gaps afterwards and are kept forever (expires_at
#      NULL); idempotent.ttl, idem_purge, idem_forget, idem_reset and idem_get
#      work after the update, also in a session that was open before it.  The
#      same keys go on through 1.1 to 1.2, step by step or in one update.
#  (e) ALTER EXTENSION idempotent UPDATE from 1.1 to 1.2: keys recorded under
#      1.1 with arguments of many types keep their identity: each redelivery
#      of the same request is a duplicate with the original rows and result,
#      a different request is still ID001; they land in the shared scope of
#      a primary key on (key, scope).  Besides keys recorded by this library
#      on a 1.1 ledger, the ledger holds keys as the 1.1 library itself
#      recorded them (a fixture with its fingerprints).  Before the update the
#      library serves the 1.1 ledger in the shared scope only.
#  (b) pg_dump -Fc | pg_restore into a new database: the ledger comes back
#      row for row (fingerprints, timestamps, expiries), so every key applied
#      before the dump is a duplicate after the restore and runs nothing; the
#      effect tables come back too; an expired key is still expired; a grant
#      on idem_get survives.
#  (c) the same with a plain-format pg_dump piped into psql.
#  (d) the extension created in a schema of its own, then dropped and created
#      again while a session that used it stays connected.
#
# The installed library is 1.2.  The keys of the 1.0 database are recorded by
# the same library in a scratch 1.1 database (which it fingerprints as 1.1
# did) and copied (without expires_at) into the 1.0 ledger, so that both hold
# exactly the same keys to compare; the library also serves a 1.0 ledger
# directly until it is updated (tested too).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('dump_upgrade');
$node->init;
$node->append_conf('postgresql.conf', "log_statement = none\n");
$node->start;

my $insert = q{INSERT INTO effects (k, v) VALUES ($1, $2) RETURNING k, v};

# The outcome of one call, as status|applied|version|previous_version|rows|result
sub call
{
	my ($db, $func, $key, $version, $v, %opt) = @_;
	my $ver = defined $version ? $version : 'NULL';
	return $node->safe_psql($db,
		    ($opt{setup} // '')
		  . "SELECT status, applied, version, previous_version, rows, result "
		  . "FROM $func('$key', $ver, \$s\$$insert\$s\$, '$key'::text, $v)");
}

sub claim
{
	my ($db, $key, $version, $policy) = @_;
	my $ver = defined $version ? $version : 'NULL';
	my $pol = defined $policy  ? "'$policy'" : 'NULL';
	return $node->safe_psql($db,
		"SELECT status, applied, version, previous_version, rows, result FROM idem_claim('$key', $ver, $pol)");
}

sub effects
{
	my ($db) = @_;
	return $node->safe_psql($db,
		q{SELECT coalesce(string_agg(k || '=' || v, ',' ORDER BY k, v), '') FROM effects});
}

# Every column of every ledger row (those of the ledger's version), without
# expires_at with no_expiry.
sub ledger
{
	my ($db, %opt) = @_;
	my $exp = $opt{no_expiry} ? q{ - 'expires_at'} : '';
	return $node->safe_psql($db,
		qq{SELECT coalesce(string_agg((to_jsonb(l) $exp)::text, ',' ORDER BY key, l::text), '')
		   FROM idem_ledger l});
}

# Keys under every policy, as test/t/002_restart.pl records them.
sub record_keys
{
	my ($db) = @_;
	is(call($db, 'idem_apply', 'once-1', undef, 1),
		'applied|t|||1|[{"k": "once-1", "v": 1}]', "$db: once key applied");
	is(call($db, 'idem_apply', 'newer', 5, 50),
		'applied|t|5||1|[{"k": "newer", "v": 50}]', "$db: newer key applied at version 5");
	is(call($db, 'idem_apply_next', 'seq', $_, 100 + $_),
		"applied|t|$_|" . ($_ == 1 ? '' : $_ - 1) . qq(|1|[{"k": "seq", "v": @{[100 + $_]}}]),
		"$db: next key applied at version $_")
	  for 1 .. 3;
	is(call($db, 'idem_upsert', 'ups', 7, 70),
		'applied|t|7||1|[{"k": "ups", "v": 70}]', "$db: upsert key applied at version 7");
	is(claim($db, 'claimed'), 'applied|t||||', "$db: once claim recorded");
	is(claim($db, 'claimed-seq', 1, 'next'), 'applied|t|1|||', "$db: next claim recorded at 1");
	return;
}

# Redeliveries of every key: nothing applies, nothing runs, nothing is written.
sub check_keys
{
	my ($db, $when) = @_;
	my $effects = effects($db);
	my $ledger  = ledger($db);
	is(call($db, 'idem_apply', 'once-1', undef, 1),
		'duplicate|f|||1|[{"k": "once-1", "v": 1}]',
		"$when: once key is a duplicate with its original rows and result");
	my ($rc, $out, $err) = $node->psql($db,
		"SELECT status FROM idem_apply('once-1', NULL, \$s\$$insert\$s\$, 'once-1'::text, 2)");
	like($err, qr/ERROR:  key "once-1" was already applied with a different statement or arguments/,
		"$when: the fingerprint still tells a reused key");
	is(call($db, 'idem_apply', 'newer', 5, 50),
		'duplicate|f|5|5|1|[{"k": "newer", "v": 50}]', "$when: newer key at 5 is a duplicate");
	is(call($db, 'idem_apply', 'newer', 4, 40), 'stale|f|5|5||',
		"$when: newer key at 4 is stale");
	is(call($db, 'idem_apply_next', 'seq', 3, 103),
		'duplicate|f|3|3|1|[{"k": "seq", "v": 103}]', "$when: next key at 3 is a duplicate");
	is(call($db, 'idem_apply_next', 'seq', 2, 102), 'stale|f|3|3||',
		"$when: next key at 2 is stale");
	is(call($db, 'idem_apply_next', 'seq', 5, 105), 'gap|f|3|3||',
		"$when: next key at 5 is a gap");
	is(call($db, 'idem_upsert', 'ups', 6, 60), 'stale|f|7|7||',
		"$when: upsert key at 6 is stale");
	is(claim($db, 'claimed'), 'duplicate|f||||', "$when: claimed key is a duplicate");
	is(claim($db, 'claimed-seq', 1, 'next'), 'duplicate|f|1|1||',
		"$when: next claim at 1 is a duplicate");
	($rc, $out, $err) = $node->psql($db, "SELECT status FROM idem_claim('claimed', 1)");
	like($err, qr/ERROR:  key "claimed" was recorded under policy "once", not "newer"/,
		"$when: the policy of a key is kept");
	is(effects($db), $effects, "$when: no effect ran again");
	is(ledger($db), $ledger, "$when: the redeliveries wrote nothing");
	return;
}

my $all_effects =
  'claimed-seq=0,newer=50,once-1=1,seq=101,seq=102,seq=103,ups=70';

###########################################################################
# (a) 1.0 -> 1.1

note 'upgrade from 1.0';

$node->safe_psql('postgres', 'CREATE DATABASE seed');
$node->safe_psql('postgres', 'CREATE DATABASE upg');
$node->safe_psql('postgres', 'CREATE DATABASE upg_calls');

# Keys recorded by this library in a 1.1 database, with ttl 0 (as 1.0 would).
$node->safe_psql('seed', q{
CREATE EXTENSION idempotent VERSION '1.1';
CREATE TABLE effects (k text NOT NULL, v int NOT NULL);
INSERT INTO effects VALUES ('claimed-seq', 0);  -- what the claimer did
});
record_keys('seed');
is(effects('seed'), $all_effects, 'seed: the effects of the applied calls');
is($node->safe_psql('seed', 'SELECT count(*) FROM idem_ledger WHERE expires_at IS NOT NULL'),
	'0', 'seed: ttl 0 keeps every key forever');

my $dir = $node->basedir;
$node->safe_psql('seed', qq{
COPY (SELECT applied_at, version, rows, fingerprint, policy, key, result FROM idem_ledger)
  TO '$dir/ledger10.copy';
COPY effects TO '$dir/effects.copy';
});

$node->safe_psql('upg', q{CREATE EXTENSION idempotent VERSION '1.0'});
is($node->safe_psql('upg', q{SELECT extversion FROM pg_extension WHERE extname = 'idempotent'}),
	'1.0', 'upg: the extension is at 1.0');
is( $node->safe_psql('upg',
		q{SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
		  WHERE attrelid = 'idem_ledger'::regclass AND attnum > 0 AND NOT attisdropped}),
	'applied_at,version,rows,fingerprint,policy,key,result',
	'upg: the 1.0 ledger has no expires_at');
is( $node->safe_psql('upg',
		q{SELECT count(*) FROM pg_proc WHERE proname IN ('idem_purge', 'idem_forget', 'idem_reset', 'idem_get')}),
	'0', 'upg: 1.0 has no retention functions');
$node->safe_psql('upg', qq{
CREATE TABLE effects (k text NOT NULL, v int NOT NULL);
COPY idem_ledger FROM '$dir/ledger10.copy';
COPY effects FROM '$dir/effects.copy';
});
is(ledger('upg', no_expiry => 1), ledger('seed', no_expiry => 1),
	'upg: the 1.0 ledger holds the keys');

# The library should serve a 1.0 ledger until ALTER EXTENSION UPDATE: a new
# library is installed for every database at once, each one updated later.
$node->safe_psql('upg_calls', q{
CREATE EXTENSION idempotent VERSION '1.0';
CREATE TABLE effects (k text NOT NULL, v int NOT NULL);
});
{
	my ($rc, $out, $err) = $node->psql('upg_calls',
		"SELECT status FROM idem_apply('k10', NULL, \$s\$$insert\$s\$, 'k10'::text, 1)");
	unlike($err, qr/server closed the connection|terminated/,
		'upg_calls: a call on a 1.0 ledger does not crash the server');
	is($out, 'applied', 'upg_calls: a call on a 1.0 ledger applies');
	is($err, '', 'upg_calls: and raises no error');

	# but a key cannot expire there: a ttl is refused, and nothing is recorded
	($rc, $out, $err) = $node->psql('upg_calls',
		"SET idempotent.ttl = '1h'; SELECT status FROM idem_apply('k11', NULL, \$s\$$insert\$s\$, 'k11'::text, 1)",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/55000: idempotent\.ttl needs version 1\.1/,
		'upg_calls: a ttl on a 1.0 ledger raises 55000');
	is($node->safe_psql('upg_calls', q{SELECT count(*) FROM effects WHERE k = 'k11'}),
		'0', 'upg_calls: and its statement left no effect');
}

# A session open since before the update, that already opened the 1.0 ledger
# (its key is removed again so that the ledgers compare below).
my $early = $node->background_psql('upg', on_error_stop => 0);
is($early->query(q{SELECT status FROM idem_apply('early', NULL, 'SELECT 1')}),
	'applied', 'a session on the 1.0 ledger applies');
$node->safe_psql('upg', q{DELETE FROM idem_ledger WHERE key = 'early'});

$node->safe_psql('upg', q{ALTER EXTENSION idempotent UPDATE TO '1.1'});
is($node->safe_psql('upg', q{SELECT extversion FROM pg_extension WHERE extname = 'idempotent'}),
	'1.1', 'upg: ALTER EXTENSION UPDATE TO 1.1 brings it to 1.1');
is( $node->safe_psql('upg',
		q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute
		  WHERE attrelid = 'idem_ledger'::regclass AND attname = 'expires_at'}),
	'timestamp with time zone', 'upg: the ledger gained expires_at');
is( $node->safe_psql('upg',
		q{SELECT pg_get_indexdef('idem_ledger_expires_at'::regclass)}),
	'CREATE INDEX idem_ledger_expires_at ON public.idem_ledger USING btree (expires_at) WHERE (expires_at IS NOT NULL)',
	'upg: and the partial expiry index');
is( $node->safe_psql('upg',
		q{SELECT string_agg(p.proname || ':' || has_function_privilege('public', p.oid, 'EXECUTE'),
		                    ',' ORDER BY p.proname)
		  FROM pg_proc p
		  WHERE p.proname IN ('idem_purge', 'idem_forget', 'idem_reset', 'idem_get')}),
	'idem_forget:false,idem_get:false,idem_purge:false,idem_reset:false',
	'upg: the retention functions, EXECUTE revoked from PUBLIC');
is( $node->safe_psql('upg',
		q{SELECT 'idem_ledger'::regclass = ANY (extconfig) FROM pg_extension WHERE extname = 'idempotent'}),
	't', 'upg: the ledger is still dumped with its rows');
is( $node->safe_psql('upg',
		q{SELECT count(*) || '/' || count(expires_at) FROM idem_ledger}),
	'6/0', 'upg: the 1.0 keys are kept forever (expires_at NULL)');
is(ledger('upg', no_expiry => 1), ledger('seed', no_expiry => 1),
	'upg: the update changed no key');

check_keys('upg', 'after the update');
is(effects('upg'), $all_effects, 'after the update: the effects are the 1.0 ones');
is($node->safe_psql('upg', 'SELECT idem_purge()'), '0',
	'after the update: purge finds nothing to delete among the 1.0 keys');

# ttl after the update
my $ttl = q{SET idempotent.ttl = '1h'; };
is(call('upg', 'idem_apply', 'ttl-1', undef, 11, setup => $ttl),
	'applied|t|||1|[{"k": "ttl-1", "v": 11}]', 'after the update: a key with a ttl applies');
is( $node->safe_psql('upg',
		q{SELECT expires_at - applied_at BETWEEN interval '1 hour' AND interval '1 hour 1 minute'
		  FROM idem_ledger WHERE key = 'ttl-1'}),
	't', 'after the update: it expires an hour after it was applied (counted from its commit)');
is(call('upg', 'idem_apply', 'ttl-1', undef, 11, setup => $ttl),
	'duplicate|f|||1|[{"k": "ttl-1", "v": 11}]', 'after the update: a duplicate before expiry');
$node->safe_psql('upg',
	q{UPDATE idem_ledger SET expires_at = now() - interval '1 second' WHERE key = 'ttl-1'});
is($node->safe_psql('upg', q{SELECT expired FROM idem_get('ttl-1')}), 't',
	'after the update: idem_get reports it expired');
is(call('upg', 'idem_apply', 'ttl-1', undef, 11, setup => $ttl),
	'applied|t|||1|[{"k": "ttl-1", "v": 11}]', 'after the update: applied again once expired');
$node->safe_psql('upg',
	q{UPDATE idem_ledger SET expires_at = now() - interval '1 second' WHERE key = 'ttl-1'});
is($node->safe_psql('upg', 'SELECT idem_purge()'), '1', 'after the update: purge deletes it');
is($node->safe_psql('upg', q{SELECT count(*) FROM idem_ledger}), '6',
	'after the update: and only it');
is($node->safe_psql('upg', q{SELECT idem_reset('seq', 10)}), '3',
	'after the update: idem_reset on a 1.0 key returns its version');
is(call('upg', 'idem_apply_next', 'seq', 11, 111), 'applied|t|11|10|1|[{"k": "seq", "v": 111}]',
	'after the update: the next key goes on from the reset watermark');
is($node->safe_psql('upg', q{SELECT idem_forget('once-1')}), 't',
	'after the update: idem_forget on a 1.0 key');
is(call('upg', 'idem_apply', 'once-1', undef, 1), 'applied|t|||1|[{"k": "once-1", "v": 1}]',
	'after the update: the forgotten 1.0 key applies again');

# The session opened before the update sees the new ledger.
is($early->query(q{SET idempotent.ttl = '1h'; SELECT status FROM idem_apply('early', NULL, 'SELECT 1')}),
	'applied', 'a session opened before the update applies after it');
is( $early->query(
		q{SELECT expires_at - applied_at BETWEEN interval '1 hour' AND interval '1 hour 1 minute'
		  FROM idem_ledger WHERE key = 'early'}),
	't', 'that session records expires_at');
is($early->query('SELECT idem_purge()'), '0', 'that session finds the expiry index');
$early->quit;

# The same 1.0 keys on to 1.2: through 1.1 step by step, and in one update
# (which runs the two scripts in turn).
for my $how ('in two steps', 'in one update')
{
	my $db = $how eq 'in two steps' ? 'chain_steps' : 'chain_direct';
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, qq{
CREATE EXTENSION idempotent VERSION '1.0';
CREATE TABLE effects (k text NOT NULL, v int NOT NULL);
COPY idem_ledger FROM '$dir/ledger10.copy';
COPY effects FROM '$dir/effects.copy';
});
	$node->safe_psql($db, q{ALTER EXTENSION idempotent UPDATE TO '1.1'})
	  if $how eq 'in two steps';
	$node->safe_psql($db, 'ALTER EXTENSION idempotent UPDATE');
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotent'}),
		'1.2', "$db: 1.0 updated to 1.2 $how");
	is( $node->safe_psql($db,
			q{SELECT count(*) || '/' || count(*) FILTER (WHERE scope = '' AND request_hash IS NULL
			                                             AND expires_at IS NULL)
			  FROM idem_ledger}),
		'6/6', "$db: the six 1.0 keys, in the shared scope, with their 1.0 identity, kept forever");
	is( $node->safe_psql($db,
			q{SELECT coalesce(string_agg(concat_ws('/', key, policy, version, rows, fingerprint,
			                                        result::text, applied_at), ',' ORDER BY key), '')
			  FROM idem_ledger}),
		$node->safe_psql('seed',
			q{SELECT coalesce(string_agg(concat_ws('/', key, policy, version, rows, fingerprint,
			                                        result::text, applied_at), ',' ORDER BY key), '')
			  FROM idem_ledger}),
		"$db: the 1.0 keys are unchanged");
	check_keys($db, "$db (1.0 -> 1.2 $how)");
	is(effects($db), $all_effects, "$db: the effects are the 1.0 ones");
}

###########################################################################
# (b) pg_dump -Fc / pg_restore, (c) pg_dump -Fp | psql

note 'dump and restore';

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('postgres', 'CREATE ROLE regress_reader');
$node->safe_psql('src', q{
CREATE EXTENSION idempotent;
CREATE TABLE effects (k text NOT NULL, v int NOT NULL);
INSERT INTO effects VALUES ('claimed-seq', 0);
GRANT EXECUTE ON FUNCTION idem_get(text) TO regress_reader;
});
record_keys('src');
# keys with a ttl: one live, one expired and not purged yet
is(call('src', 'idem_apply', 'ttl-live', undef, 21, setup => $ttl),
	'applied|t|||1|[{"k": "ttl-live", "v": 21}]', 'src: a key with an hour to live');
is(call('src', 'idem_apply', 'ttl-gone', undef, 22, setup => $ttl),
	'applied|t|||1|[{"k": "ttl-gone", "v": 22}]', 'src: a key that expires');
$node->safe_psql('src',
	q{UPDATE idem_ledger SET expires_at = now() - interval '1 second' WHERE key = 'ttl-gone'});
my $src_ledger  = ledger('src');
my $src_effects = effects('src');
is($src_effects,
	'claimed-seq=0,newer=50,once-1=1,seq=101,seq=102,seq=103,ttl-gone=22,ttl-live=21,ups=70',
	'src: the effects');

sub check_restored
{
	my ($db) = @_;
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotent'}),
		'1.2', "$db: the extension is at 1.2");
	is(ledger($db),  $src_ledger,  "$db: the ledger is restored row for row");
	is(effects($db), $src_effects, "$db: the effects are restored");
	is( $node->safe_psql($db,
			q{SELECT count(*) FROM pg_indexes WHERE tablename = 'idem_ledger'}),
		'2', "$db: the ledger has its two indexes");
	check_keys($db, "$db");
	is(call($db, 'idem_apply', 'ttl-live', undef, 21, setup => $ttl),
		'duplicate|f|||1|[{"k": "ttl-live", "v": 21}]', "$db: the live ttl key is a duplicate");
	is( $node->safe_psql($db,
			q{SET ROLE regress_reader; SELECT key || ':' || expired FROM idem_get('ttl-gone')}),
		'ttl-gone:true', "$db: the grant on idem_get survived; the expired key is still expired");
	is($node->safe_psql($db, 'SELECT idem_purge()'), '1', "$db: purge deletes the expired key");
	is(call($db, 'idem_apply', 'ttl-gone', undef, 22, setup => $ttl),
		'applied|t|||1|[{"k": "ttl-gone", "v": 22}]', "$db: which then applies again");
	is(effects($db),
		'claimed-seq=0,newer=50,once-1=1,seq=101,seq=102,seq=103,ttl-gone=22,ttl-gone=22,ttl-live=21,ups=70',
		"$db: one effect more, the expired key's");
	is($node->safe_psql($db, q{SELECT count(*) FROM idem_ledger}), '8', "$db: eight keys");
	return;
}

my $host = $node->host;
my $port = $node->port;
my $dumpfile = "$dir/src.dump";

$node->command_ok(
	[ 'pg_dump', '-h', $host, '-p', $port, '-Fc', '-f', $dumpfile, 'src' ],
	'pg_dump -Fc of the source database');
$node->safe_psql('postgres', 'CREATE DATABASE dst_custom');
$node->command_ok(
	[ 'pg_restore', '-h', $host, '-p', $port, '--exit-on-error', '-d', 'dst_custom', $dumpfile ],
	'pg_restore into a new database');
check_restored('dst_custom');

# plain format through a pipe
my ($plain, $dump_err, $psql_out, $psql_err) = ('', '', '', '');
IPC::Run::run([ 'pg_dump', '-h', $host, '-p', $port, '-Fp', 'src' ], '>', \$plain)
  or die 'pg_dump -Fp failed';
like($plain, qr/^CREATE EXTENSION IF NOT EXISTS idempotent WITH SCHEMA public;$/m,
	'the plain dump creates the extension');
unlike($plain, qr/CREATE TABLE public\.idem_ledger/, 'it does not create the ledger itself');
like($plain, qr/^COPY public\.idem_ledger \(applied_at, version, rows, fingerprint, policy, key, result, expires_at, scope, request_hash\b[^)]*\) FROM stdin;$/m,
	'it copies the ledger rows, expires_at, scope and request_hash included');
$node->safe_psql('postgres', 'CREATE DATABASE dst_plain');
my $ok = IPC::Run::run(
	[ 'pg_dump', '-h', $host, '-p', $port, '-Fp', 'src' ], '2>', \$dump_err,
	'|', [ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $host, '-p', $port, '-d', 'dst_plain' ],
	'>', \$psql_out, '2>', \$psql_err);
ok($ok, 'pg_dump -Fp src | psql dst_plain');
is($dump_err . $psql_err, '', 'neither reported an error');
check_restored('dst_plain');

# (d) The extension in a schema of its own, and created again under a session
# that already used it: the functions and the ledger live in the extension's
# schema, and the session finds the new ledger (its cached relations are
# forgotten with the old one).
$node->safe_psql('postgres', 'CREATE DATABASE schemas');
$node->safe_psql('schemas', 'CREATE SCHEMA ops; CREATE EXTENSION idempotent SCHEMA ops');
my $user = $node->background_psql('schemas', on_error_stop => 0);
is($user->query(q{SELECT status FROM ops.idem_apply('s:1', NULL, 'SELECT 1')}),
	'applied', 'schemas: idem_apply works in the schema the extension was created in');
is($user->query(q{SELECT status FROM ops.idem_apply('s:1', NULL, 'SELECT 1')}),
	'duplicate', 'schemas: and finds its keys there');
is($node->safe_psql('schemas', q{SELECT count(*) FROM ops.idem_ledger WHERE key = 's:1'}),
	'1', 'schemas: the ledger is ops.idem_ledger');
$node->safe_psql('schemas',
	'DROP EXTENSION idempotent; CREATE SCHEMA ops2; CREATE EXTENSION idempotent SCHEMA ops2');
is($user->query(q{SELECT status FROM ops2.idem_apply('s:1', NULL, 'SELECT 1')}),
	'applied', 'schemas: after DROP and CREATE EXTENSION, the same session uses the new, empty ledger');
is($node->safe_psql('schemas', q{SELECT count(*) FROM ops2.idem_ledger WHERE key = 's:1'}),
	'1', 'schemas: and records the key there');
$user->quit;

###########################################################################
# (e) 1.1 -> 1.2: keys recorded under 1.1 keep their identity

note 'upgrade from 1.1 to 1.2';

# Requests under every policy with arguments of many types: name, function,
# version, the expression its statement stores in calls.args, the arguments
# after the key, and the arguments of another request on the same key (no
# arguments at all: undef, and the other request is another statement).
my @requests = (
	[ 'int',     'idem_apply',      'NULL', q{format('%s', $2)},        q{42},          q{43} ],
	[ 'bigint',  'idem_apply',      'NULL', q{format('%s', $2)},        q{9007199254740993::bigint}, q{9007199254740992::bigint} ],
	[ 'numeric', 'idem_apply',      'NULL', q{format('%s/%s', $2, $3)}, q{25.00::numeric, 42}, q{25.01::numeric, 42} ],
	[ 'float',   'idem_apply',      'NULL', q{format('%s', $2)},        q{0.1::float8}, q{0.2::float8} ],
	[ 'text',    'idem_apply',      'NULL', q{format('%s', $2)},        q{'hello'::text}, q{'hullo'::text} ],
	[ 'varchar', 'idem_apply',      'NULL', q{format('%s', $2)},        q{'hi'::varchar}, q{'ho'::varchar} ],
	[ 'untyped', 'idem_apply',      'NULL', q{$2},                      q{'abc'},       q{'abd'} ],
	[ 'tstz',    'idem_apply',      'NULL', q{format('%s', $2)},
		q{'2026-01-02 03:04:05+02'::timestamptz}, q{'2026-01-02 03:04:06+02'::timestamptz} ],
	[ 'array',   'idem_apply',      'NULL', q{format('%s', $2)},        q{ARRAY[1, 2, 3]}, q{ARRAY[1, 2, 4]} ],
	[ 'jsonb',   'idem_apply',      'NULL', q{format('%s', $2)},        q{'{"a": 1}'::jsonb}, q{'{"a": 2}'::jsonb} ],
	[ 'null',    'idem_apply',      'NULL', q{format('%s/%s', $2, $3)}, q{NULL::int, 7}, q{8, 7} ],
	[ 'noargs',  'idem_apply',      'NULL', undef,                      undef,          undef ],
	[ 'newer',   'idem_apply',      '5',    q{format('%s', $2)},        q{50},          q{51} ],
	[ 'next',    'idem_apply_next', '1',    q{format('%s', $2)},        q{101},         q{102} ],
	[ 'upsert',  'idem_upsert',     '7',    q{format('%s', $2)},        q{70},          q{71} ],
	# types of this database: their OIDs were part of 1.1's identity
	[ 'composite', 'idem_apply', 'NULL', q{format('%s', $2)},
		q{ROW(25.00, '2026-01-02 03:04:05+02', 'x')::money_at},
		q{ROW(25.00, '2026-01-02 03:04:05+02', 'z')::money_at} ],
	[ 'enum', 'idem_apply', 'NULL', q{format('%s', $2)}, q{'happy'::mood}, q{'ok'::mood} ],
	[ 'composites', 'idem_apply', 'NULL', q{format('%s', $2)},
		q{ARRAY[ROW(1.5, NULL, 'y')::money_at]}, q{ARRAY[ROW(1.5, NULL, 'w')::money_at]} ],
);

# The outcome of request $r on key $key (its own arguments, or other => 1:
# another request's; version => V: at another version) as
# status|applied|version|previous_version|rows|result; with error => 1,
# psql's stderr instead.
sub request
{
	my ($db, $key, $r, %opt) = @_;
	my ($name, $func, $version, $expr, $args, $other) = @$r;
	$args    = $other        if $opt{other};
	$version = $opt{version} if defined $opt{version};
	my $stmt =
	  defined $expr
	  ? "INSERT INTO calls (k, args) SELECT \$1, $expr RETURNING k, args"
	  : "INSERT INTO calls (k, args) VALUES ('$key', '" . ($opt{other} ? 'other' : 'none') . "') RETURNING k, args";
	my $sql =
	    ($opt{setup} // '')
	  . "SELECT status, applied, version, previous_version, rows, result FROM $func('$key', $version, \$s\$$stmt\$s\$"
	  . (defined $expr ? ", '$key'::text, $args" : '') . ')';
	if ($opt{error})
	{
		my ($rc, $out, $err) = $node->psql($db, $sql, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
		return $err;
	}
	return $node->safe_psql($db, $sql);
}

# What a duplicate of an applied call reports: the stored version both
# before and after, the original rows and result.
sub as_duplicate
{
	my ($applied) = @_;
	my ($status, $flag, $version, $previous, $rest) = split /\|/, $applied, 5;
	return "duplicate|f|$version|$version|$rest";
}

# Keys as the 1.1 library itself recorded the first fifteen requests, as
# f:<name>: its fingerprints, rows and results (the fingerprints of these
# built-in types depend on no OID of this database; they are those of a
# little-endian machine).
my @recorded_by_11 = (
	[ 'f:int',     'o', undef, '4783913186251713891',  '[{"k": "f:int", "args": "42"}]' ],
	[ 'f:bigint',  'o', undef, '6280283838215277998',  '[{"k": "f:bigint", "args": "9007199254740993"}]' ],
	[ 'f:numeric', 'o', undef, '-2197106883608659190', '[{"k": "f:numeric", "args": "25.00/42"}]' ],
	[ 'f:float',   'o', undef, '-2676818644218993984', '[{"k": "f:float", "args": "0.1"}]' ],
	[ 'f:text',    'o', undef, '-2744120599612075447', '[{"k": "f:text", "args": "hello"}]' ],
	[ 'f:varchar', 'o', undef, '323217382974985723',   '[{"k": "f:varchar", "args": "hi"}]' ],
	[ 'f:untyped', 'o', undef, '-4419774354427229210', '[{"k": "f:untyped", "args": "abc"}]' ],
	[ 'f:tstz',    'o', undef, '-1142111746401891674', '[{"k": "f:tstz", "args": "2026-01-02 01:04:05+00"}]' ],
	[ 'f:array',   'o', undef, '9215280772009952552',  '[{"k": "f:array", "args": "{1,2,3}"}]' ],
	[ 'f:jsonb',   'o', undef, '7227998297746079080',  '[{"k": "f:jsonb", "args": "{\\"a\\": 1}"}]' ],
	[ 'f:null',    'o', undef, '-109768448615540680',  '[{"k": "f:null", "args": "/7"}]' ],
	[ 'f:noargs',  'o', undef, '-700792446957723910',  '[{"k": "f:noargs", "args": "none"}]' ],
	[ 'f:newer',   'n', 5,     '-6043662346968900377', '[{"k": "f:newer", "args": "50"}]' ],
	[ 'f:next',    's', 1,     '-5697091175754237419', '[{"k": "f:next", "args": "101"}]' ],
	[ 'f:upsert',  'u', 7,     '-4691295803315073933', '[{"k": "f:upsert", "args": "70"}]' ],
);

$node->safe_psql('postgres', 'CREATE DATABASE upg11');
$node->safe_psql('postgres', 'CREATE ROLE regress_scope_app');
$node->safe_psql('upg11', q{
CREATE EXTENSION idempotent VERSION '1.1';
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE money_at AS (amount numeric, at timestamptz, note text);
CREATE TABLE calls (k text NOT NULL, args text);
});
is($node->safe_psql('upg11', q{SELECT extversion FROM pg_extension WHERE extname = 'idempotent'}),
	'1.1', 'upg11: the extension is at 1.1');

# keys recorded by this library on the 1.1 ledger (t:<name>)
my %applied;
for my $r (@requests)
{
	my $key = "t:$r->[0]";
	$applied{$key} = request('upg11', $key, $r);
	like($applied{$key}, qr/^applied\|t\|/, "upg11: $key applied at 1.1");
}
is(request('upg11', 't:next', $requests[13]), as_duplicate($applied{'t:next'}),
	'upg11: a redelivery at 1.1 is a duplicate');
is(claim('upg11', 't:claim'), 'applied|t||||', 'upg11: a once claim at 1.1');
is(claim('upg11', 't:claim-newer', 3), 'applied|t|3|||', 'upg11: a newer claim at 1.1');
is(claim('upg11', 't:claim-next', 1, 'next'), 'applied|t|1|||', 'upg11: a next claim at 1.1');

# keys as the 1.1 library recorded them, with their effects
$node->safe_psql('upg11',
	'INSERT INTO idem_ledger (applied_at, key, policy, version, rows, fingerprint, result) VALUES '
	  . join(', ',
		map {
			sprintf(q{(now(), '%s', '%s', %s, 1, %s, '%s')},
				$_->[0], $_->[1], $_->[2] // 'NULL', $_->[3], $_->[4])
		} @recorded_by_11)
	  . q{; INSERT INTO calls SELECT r->>'k', r->>'args'
	      FROM idem_ledger, jsonb_array_elements(result) r WHERE key LIKE 'f:%'});
for my $i (0 .. $#recorded_by_11)
{
	my $key = $recorded_by_11[$i][0];
	my $r   = $requests[$i];
	die "the 1.1 key $key is not request $r->[0]" unless $key eq "f:$r->[0]";
	$applied{$key} = 'applied|t|'
	  . (defined $recorded_by_11[$i][2] ? $recorded_by_11[$i][2] : '')
	  . "||1|$recorded_by_11[$i][4]";
}
is($node->safe_psql('upg11', q{SELECT count(*) FROM idem_ledger WHERE fingerprint IS NULL}),
	'3', "upg11: every key but the claims' has a 1.1 fingerprint");

# Before the update: the library serves the 1.1 ledger in the shared scope
# only; a scope is refused (55000, with its hint) and records nothing.
my $scoped = q{SET idempotent.scope = 'regress_scope_app'; };
like(request('upg11', 't:scoped', $requests[0], setup => $scoped, error => 1),
	qr/ERROR:  55000: scopes need version 1\.2 of extension "idempotent".*HINT:  Run ALTER EXTENSION idempotent UPDATE, or set idempotent\.scope to ''\./s,
	'upg11: a scope on the 1.1 ledger raises 55000 with its hint');
{
	my ($rc, $out, $err) = $node->psql('upg11', "${scoped}SELECT status FROM idem_claim('t:scoped-claim')");
	like($err, qr/ERROR:  scopes need version 1\.2/, 'upg11: so does a claim in a scope');
}
is( $node->safe_psql('upg11',
		q{SELECT count(*) FROM idem_ledger WHERE key LIKE 't:scoped%'}),
	'0', 'upg11: and nothing was recorded');
is(request('upg11', 't:int', $requests[0], setup => q{SET idempotent.scope = ''; }),
	as_duplicate($applied{'t:int'}), "upg11: scope '' is the 1.1 ledger");

my $calls_before  = $node->safe_psql('upg11', q{SELECT string_agg(k || '=' || args, ',' ORDER BY k, args) FROM calls});
my $nkeys         = $node->safe_psql('upg11', 'SELECT count(*) FROM idem_ledger');
my $old_columns   = q{SELECT string_agg(concat_ws('/', key, policy, version, rows, fingerprint,
                                                   result::text, applied_at, expires_at), ',' ORDER BY key)
                      FROM idem_ledger};
my $ledger_before = $node->safe_psql('upg11', $old_columns);
is($nkeys, @requests + @recorded_by_11 + 3, 'upg11: the keys before the update');

$node->safe_psql('upg11', 'ALTER EXTENSION idempotent UPDATE');
is($node->safe_psql('upg11', q{SELECT extversion FROM pg_extension WHERE extname = 'idempotent'}),
	'1.2', 'upg11: ALTER EXTENSION UPDATE brings it to 1.2');
is($node->safe_psql('upg11', q{SELECT pg_get_indexdef('idem_ledger_pkey'::regclass)}),
	'CREATE UNIQUE INDEX idem_ledger_pkey ON public.idem_ledger USING btree (key, scope)',
	'upg11: the primary key is (key, scope)');
is( $node->safe_psql('upg11',
		q{SELECT count(*) || '/' || count(*) FILTER (WHERE scope = '') || '/' || count(request_hash)
		  FROM idem_ledger}),
	"$nkeys/$nkeys/0", 'upg11: every key is there, in the shared scope, with its 1.1 identity only');
is($node->safe_psql('upg11', $old_columns), $ledger_before, 'upg11: the update changed no key');

# every key: the same request is a duplicate with the original rows and
# result, another request is ID001; nothing runs, nothing is written (an
# upsert key applies its own version again: it is stale below it)
my $ledger_after = ledger('upg11');
for my $i (0 .. $#requests)
{
	my $r = $requests[$i];
	for my $key ("t:$r->[0]", ($i <= $#recorded_by_11 ? ("f:$r->[0]") : ()))
	{
		if ($r->[1] eq 'idem_upsert')
		{
			is(request('upg11', $key, $r, version => 6), 'stale|f|7|7||',
				"after 1.1 -> 1.2: $key at version 6 is stale");
			next;
		}
		is(request('upg11', $key, $r), as_duplicate($applied{$key}),
			"after 1.1 -> 1.2: $key is a duplicate with its original rows and result");
		like(request('upg11', $key, $r, other => 1, error => 1),
			qr/ERROR:  ID001: key "\Q$key\E" was already applied with a different statement or arguments/,
			"after 1.1 -> 1.2: another request on $key is ID001");
	}
}
is(claim('upg11', 't:claim'), 'duplicate|f||||', 'after 1.1 -> 1.2: the once claim is a duplicate');
is(claim('upg11', 't:claim-newer', 3), 'duplicate|f|3|3||', 'after 1.1 -> 1.2: the newer claim at 3 is a duplicate');
is(claim('upg11', 't:claim-next', 1, 'next'), 'duplicate|f|1|1||', 'after 1.1 -> 1.2: the next claim at 1 is a duplicate');
is($node->safe_psql('upg11', q{SELECT string_agg(k || '=' || args, ',' ORDER BY k, args) FROM calls}),
	$calls_before, 'after 1.1 -> 1.2: no statement ran again');
is(ledger('upg11'), $ledger_after, 'after 1.1 -> 1.2: the redeliveries wrote nothing');

# the keys go on under 1.2's identity
is( $node->safe_psql('upg11',
		q{SELECT status || '/' || previous_version FROM idem_apply('t:newer', 6, 'SELECT $1 AS amount', 25.00)}),
	'applied/5', 'after 1.1 -> 1.2: a 1.1 newer key applies a newer version');
is( $node->safe_psql('upg11',
		q{SELECT (fingerprint IS NULL) || '/' || (request_hash IS NOT NULL) FROM idem_ledger WHERE key = 't:newer'}),
	'true/true', 'after 1.1 -> 1.2: and records the identity by value');
is( $node->safe_psql('upg11',
		q{SELECT status || '/' || result FROM idem_apply('t:newer', 6, 'SELECT $1 AS amount', 25::int2)}),
	'duplicate/[{"amount": 25.00}]', 'after 1.1 -> 1.2: whose redelivery with an equal value of another type is a duplicate');

# the same key in a scope is another key
is(request('upg11', 't:int', $requests[0], setup => $scoped), $applied{'t:int'},
	'after 1.1 -> 1.2: t:int applies in scope regress_scope_app');
is( $node->safe_psql('upg11',
		q{SELECT string_agg(quote_literal(scope), ',' ORDER BY scope) FROM idem_ledger WHERE key = 't:int'}),
	q{'','regress_scope_app'}, 'after 1.1 -> 1.2: t:int is two keys, one per scope');
is(request('upg11', 't:int', $requests[0]), as_duplicate($applied{'t:int'}),
	"after 1.1 -> 1.2: and the 1.1 key in scope '' is still a duplicate");

# (f) privileges granted under 1.1 on what 1.2 creates again (idem_get,
# idem_stats, idem_stat) survive the update, and a dump still carries them
note 'privileges across 1.1 -> 1.2';
$node->safe_psql('postgres', 'CREATE DATABASE upg_acl');
$node->safe_psql('upg_acl', q{
CREATE EXTENSION idempotent VERSION '1.1';
CREATE ROLE regress_acl_reader;
GRANT EXECUTE ON FUNCTION idem_get(text) TO regress_acl_reader;
GRANT SELECT ON idem_stat TO regress_acl_reader;
ALTER EXTENSION idempotent UPDATE TO '1.2';
});
is( $node->safe_psql('upg_acl',
		q{SELECT concat_ws('/', has_function_privilege('regress_acl_reader', 'idem_get(text)', 'EXECUTE'),
		                        has_table_privilege('regress_acl_reader', 'idem_stat', 'SELECT'),
		                        has_function_privilege('regress_acl_reader', 'idem_apply(text, bigint, text)', 'EXECUTE'),
		                        has_function_privilege('public', 'idem_get(text)', 'EXECUTE'))}),
	't/t/f/f', 'after 1.1 -> 1.2: the grants on idem_get and idem_stat are kept, nothing more');
my ($dump_out) = run_command([ 'pg_dump', '-s', '-h', $host, '-p', $port, 'upg_acl' ]);
like($dump_out, qr/^GRANT ALL ON FUNCTION public\.idem_get\(key text\) TO regress_acl_reader;$/m,
	'after 1.1 -> 1.2: pg_dump carries the grant on idem_get');
like($dump_out, qr/^GRANT SELECT ON TABLE public\.idem_stat TO regress_acl_reader;$/m,
	'after 1.1 -> 1.2: pg_dump carries the grant on idem_stat');
# the grants are real ones: the role depends on them
my ($drop_rc, $drop_out, $drop_err) = $node->psql('upg_acl', 'DROP ROLE regress_acl_reader');
like($drop_err, qr/role "regress_acl_reader" cannot be dropped because some objects depend on it/,
	'after 1.1 -> 1.2: a role granted idem_get depends on the grant');
$node->safe_psql('postgres', 'DROP DATABASE upg_acl');
$node->safe_psql('postgres', 'DROP ROLE regress_acl_reader');

$node->stop;
done_testing();
