
# 002_restart.pl
#
# Keys outlive the server: a clean restart, an immediate-mode stop (no
# shutdown checkpoint, recovery from WAL) and a crash (every server process
# killed with SIGKILL) keep every committed key, under each policy, with its
# stored version, rows and result; a redelivery after the restart is a
# duplicate (or stale, or gap) and runs nothing.  A key claimed by a
# transaction that had not committed when the server crashed is gone after
# the restart, and so is its effect: the key can be applied again.  A key
# held by a prepared transaction survives the crash and still holds.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $node = PostgreSQL::Test::Cluster->new('restart');
$node->init;
$node->append_conf(
	'postgresql.conf', qq(
max_prepared_transactions = 5
checkpoint_timeout = '1h'
log_statement = none
));
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION idempotent;
-- no unique constraint: an effect applied twice shows as two rows
CREATE TABLE effects (k text NOT NULL, v int NOT NULL);
});

my $insert = q{INSERT INTO effects (k, v) VALUES ($1, $2) RETURNING k, v};

# The outcome of one call, as status|applied|version|previous_version|rows|result
sub call
{
	my ($func, $key, $version, $v, %opt) = @_;
	my $ver = defined $version ? $version : 'NULL';
	my $sql =
	    "SELECT status, applied, version, previous_version, rows, result "
	  . "FROM $func('$key', $ver, \$s\$$insert\$s\$, '$key'::text, $v)";
	return $node->safe_psql('postgres', ($opt{setup} // '') . $sql);
}

sub claim
{
	my ($key, %opt) = @_;
	return $node->safe_psql('postgres',
		($opt{setup} // '')
		  . "SELECT status, applied, version, previous_version, rows, result "
		  . "FROM idem_claim('$key')");
}

sub effects
{
	return $node->safe_psql('postgres',
		q{SELECT coalesce(string_agg(k || '=' || v, ',' ORDER BY k, v), '') FROM effects});
}

sub ledger
{
	return $node->safe_psql('postgres',
		q{SELECT coalesce(string_agg(concat_ws('/', key, policy, version, rows,
		                                       result::text, fingerprint IS NOT NULL),
		                             ',' ORDER BY key), '')
		  FROM idem_ledger});
}

my $dup_once = sub { my ($k, $v) = @_; "duplicate|f|||1|[{\"k\": \"$k\", \"v\": $v}]" };

###########################################################################
# Keys under every policy, committed.

is(call('idem_apply', 'once-1', undef, 1), 'applied|t|||1|[{"k": "once-1", "v": 1}]',
	'once key applied');
is(call('idem_apply', 'once-2', undef, 2), 'applied|t|||1|[{"k": "once-2", "v": 2}]',
	'another once key applied');
is(call('idem_apply', 'newer', 5, 50), 'applied|t|5||1|[{"k": "newer", "v": 50}]',
	'newer key applied at version 5');
is(call('idem_apply_next', 'seq', $_, 100 + $_), "applied|t|$_|" . ($_ == 1 ? '' : $_ - 1) . qq(|1|[{"k": "seq", "v": @{[100 + $_]}}]),
	"next key applied at version $_")
  for 1 .. 3;
is(call('idem_upsert', 'ups', 7, 70), 'applied|t|7||1|[{"k": "ups", "v": 70}]',
	'upsert key applied at version 7');
is(claim('claimed'), 'applied|t||||', 'claim recorded');

my $effects = effects();
my $ledger  = ledger();
is($effects,
	'newer=50,once-1=1,once-2=2,seq=101,seq=102,seq=103,ups=70',
	'the effects of the applied calls');

# Every committed key is still there with its version, rows and result.
sub check_keys
{
	my ($when) = @_;
	is(ledger(), $ledger, "$when: the ledger is unchanged");
	is(call('idem_apply', 'once-1', undef, 1), $dup_once->('once-1', 1),
		"$when: once key is a duplicate, with its original rows and result");
	is(call('idem_apply', 'once-2', undef, 2), $dup_once->('once-2', 2),
		"$when: second once key is a duplicate");
	is(call('idem_apply', 'newer', $main::newer_version, $main::newer_value),
		"duplicate|f|$main::newer_version|$main::newer_version|1|[{\"k\": \"newer\", \"v\": $main::newer_value}]",
		"$when: newer key at its stored version is a duplicate");
	is(call('idem_apply', 'newer', 4, 40), "stale|f|$main::newer_version|$main::newer_version||",
		"$when: newer key at an older version is stale");
	is(call('idem_apply_next', 'seq', 3, 103),
		'duplicate|f|3|3|1|[{"k": "seq", "v": 103}]',
		"$when: next key at its stored version is a duplicate");
	is(call('idem_apply_next', 'seq', 2, 102), 'stale|f|3|3||',
		"$when: next key at an older version is stale");
	is(call('idem_apply_next', 'seq', 5, 105), 'gap|f|3|3||',
		"$when: next key beyond stored + 1 is a gap");
	is(call('idem_upsert', 'ups', 6, 60), 'stale|f|7|7||',
		"$when: upsert key at an older version is stale");
	is(claim('claimed'), 'duplicate|f||||', "$when: claimed key is a duplicate");
	is(effects(), $effects, "$when: no effect ran twice");
	is(ledger(), $ledger, "$when: the duplicates wrote nothing");
	return;
}

$main::newer_version = 5;
$main::newer_value   = 50;
check_keys('before any restart');

###########################################################################
# Clean restart.

$node->restart;
check_keys('after a clean restart');

# New keys and a version bump after the restart's shutdown checkpoint: they
# live only in WAL until the next checkpoint.
is(call('idem_apply', 'once-3', undef, 3), 'applied|t|||1|[{"k": "once-3", "v": 3}]',
	'a new once key after the restart');
is(call('idem_apply', 'newer', 6, 60), 'applied|t|6|5|1|[{"k": "newer", "v": 60}]',
	'the newer key moves to version 6');
$main::newer_version = 6;
$main::newer_value   = 60;
$effects = effects();
$ledger  = ledger();
is($effects,
	'newer=50,newer=60,once-1=1,once-2=2,once-3=3,seq=101,seq=102,seq=103,ups=70',
	'the effects after the restart');

###########################################################################
# Immediate stop: no shutdown checkpoint, recovery from WAL at start.

{
	my $offset = -s $node->logfile;
	$node->stop('immediate');
	$node->start;
	like(slurp_file($node->logfile, $offset), qr/redo starts at/,
		'the immediate stop was followed by WAL recovery');
}
check_keys('after an immediate stop');
is(call('idem_apply', 'once-3', undef, 3), $dup_once->('once-3', 3),
	'after an immediate stop: the key applied after the last checkpoint is a duplicate');

###########################################################################
# A crash with transactions in flight.

# Stop every server process, then kill them all: nothing gets to clean up.
sub crash
{
	my $pidfile = $node->data_dir . '/postmaster.pid';
	my ($pm) = split /\n/, slurp_file($pidfile);
	my @kids;
	kill 'STOP', $pm;
	opendir my $dh, '/proc' or die "no /proc: $!";
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		open my $fh, '<', "/proc/$pid/stat" or next;
		my $stat = <$fh>;
		close $fh;
		push @kids, $pid
		  if defined $stat && $stat =~ /\)\s+\S\s+(\d+)\s/ && $1 == $pm;
	}
	closedir $dh;
	kill 'STOP', @kids;
	kill 'KILL', $pm, @kids;
	$node->kill9;    # the node forgets its (dead) postmaster
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	usleep(20_000) while (grep { kill 0, $_ } $pm, @kids) && time < $deadline;
	die 'server processes survived SIGKILL' if grep { kill 0, $_ } $pm, @kids;
	return;
}

# A prepared transaction holding a key: it must survive the crash.
$node->safe_psql('postgres',
	    "BEGIN; SELECT idem_apply('prepared', NULL, \$s\$$insert\$s\$, 'prepared'::text, 9); "
	  . "PREPARE TRANSACTION 'holds_prepared';");

# An open transaction that applied a key, claimed another and moved a
# version, not committed when the server dies.
my $open = $node->background_psql('postgres', on_error_stop => 1);
$open->query_safe('BEGIN');
is( $open->query_safe(
		"SELECT status FROM idem_apply('pending', NULL, \$s\$$insert\$s\$, 'pending'::text, 8)"),
	'applied', 'in flight: a new key applied, not committed');
is($open->query_safe("SELECT status FROM idem_claim('pending-claim')"),
	'applied', 'in flight: a new key claimed, not committed');
is( $open->query_safe(
		"SELECT status FROM idem_apply('newer', 7, \$s\$$insert\$s\$, 'newer'::text, 70)"),
	'applied', 'in flight: the newer key moved to version 7, not committed');

# Meanwhile the keys are taken, as another session sees.
my $nowait = 'SET idempotent.wait = off; ';
is(call('idem_apply', 'pending', undef, 8, setup => $nowait), 'in_progress|f||||',
	'in flight: another session sees the new key in progress');
is(claim('pending-claim', setup => $nowait), 'in_progress|f||||',
	'in flight: another session sees the claim in progress');
is(call('idem_apply', 'newer', 7, 70, setup => $nowait), 'in_progress|f||||',
	'in flight: another session sees the version move in progress');
is(call('idem_apply', 'prepared', undef, 9, setup => $nowait), 'in_progress|f||||',
	'the prepared transaction holds its key');
# and a key committed just before the crash
is(call('idem_apply', 'last', undef, 10), 'applied|t|||1|[{"k": "last", "v": 10}]',
	'a key committed just before the crash');
$effects = effects();
$ledger  = ledger();

crash();
$open->quit;    # its server is gone; psql just leaves
{
	my $offset = -s $node->logfile;
	$node->start;
	like(slurp_file($node->logfile, $offset),
		qr/database system was not properly shut down; automatic recovery in progress/,
		'the crash was followed by WAL recovery');
}

check_keys('after a crash');
is(call('idem_apply', 'last', undef, 10), $dup_once->('last', 10),
	'after a crash: the key committed just before it is a duplicate');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM idem_ledger WHERE key IN ('pending', 'pending-claim')}),
	'0', 'after a crash: the uncommitted keys are not in the ledger');
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE k = 'pending'}),
	'0', 'after a crash: the uncommitted effect is gone');
is( $node->safe_psql('postgres', q{SELECT version FROM idem_ledger WHERE key = 'newer'}),
	'6', 'after a crash: the uncommitted version move is gone');

is(call('idem_apply', 'pending', undef, 8), 'applied|t|||1|[{"k": "pending", "v": 8}]',
	'after a crash: the key whose transaction died is applied again');
is(claim('pending-claim'), 'applied|t||||',
	'after a crash: the claim whose transaction died is claimed again');
is(call('idem_apply', 'newer', 7, 70), 'applied|t|7|6|1|[{"k": "newer", "v": 70}]',
	'after a crash: the version move whose transaction died is applied again');
is(call('idem_apply', 'pending', undef, 8), $dup_once->('pending', 8),
	'after a crash: and the re-applied key is now a duplicate');
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE k = 'pending'}),
	'1', 'after a crash: the re-applied effect is there once');

# The prepared transaction came back from the crash still holding its key.
is( $node->safe_psql('postgres', q{SELECT gid FROM pg_prepared_xacts}),
	'holds_prepared', 'after a crash: the prepared transaction is still there');
is(call('idem_apply', 'prepared', undef, 9, setup => $nowait), 'in_progress|f||||',
	'after a crash: the prepared transaction still holds its key');
$node->safe_psql('postgres', q{COMMIT PREPARED 'holds_prepared'});
is(call('idem_apply', 'prepared', undef, 9), $dup_once->('prepared', 9),
	'after COMMIT PREPARED: the key is a duplicate');
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE k = 'prepared'}),
	'1', 'after COMMIT PREPARED: its effect is there once');

# A call that waits on a prepared transaction gets its answer when it ends.
$node->safe_psql('postgres',
	    "BEGIN; SELECT idem_apply('prepared-2', NULL, \$s\$$insert\$s\$, 'prepared-2'::text, 11); "
	  . "PREPARE TRANSACTION 'rolls_back';");
$node->restart;
my $waiter = $node->background_psql('postgres', on_error_stop => 1);
$waiter->query_until(qr/waiting/,
	    "\\echo waiting\n"
	  . "SELECT status FROM idem_apply('prepared-2', NULL, \$s\$$insert\$s\$, 'prepared-2'::text, 11);\n");
$node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'})
  or die 'the waiter never waited';
$node->safe_psql('postgres', q{ROLLBACK PREPARED 'rolls_back'});
is($waiter->query_safe('SELECT 1'), "applied\n1",
	'after a restart, a call waiting on a prepared transaction that rolls back applies');
$waiter->quit;
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE k = 'prepared-2'}),
	'1', 'and its effect is there once');

$node->stop;
done_testing();
