# 020_pgq_consumer.pl
#
# Consumer logic written as stored procedures, killed mid-work and run again:
# every business effect must land exactly once.  The examples under test are
# the repository's own files, loaded as they are:
#
#  examples/pgq/consumer.sql    CALL consume_payments(): a PgQ consumer that
#      takes a batch (pgq.next_batch), applies each event through idem_apply
#      under its business key, and finishes the batch (pgq.finish_batch).
#  examples/inbox/consumer.sql  CALL inbox_consume(): a procedure that works
#      through an inbox table with idem_claim, one COMMIT per message.
#
# The streams carry producer retries: the same business event inserted twice,
# right after the first copy (same batch) or later (another batch).
#
# PgQ, each scenario in a database of its own:
#  batch_sigkill    one transaction per batch (commit_every 0), the consumer's
#                   backend killed with SIGKILL (the postmaster resets every
#                   backend and recovers) in the middle of the second batch.
#                   Nothing of that batch committed; PgQ hands out the same
#                   batch id again and the rerun applies it.
#  event_sigkill    commit_every 1 (COMMIT after every event, finish_batch at
#                   the end), SIGKILL in the middle of the second batch: its
#                   first events are committed but the batch is not finished.
#                   PgQ hands out the same batch again and those events come
#                   back from idem_apply as duplicates.
#  event_terminate  the same with pg_terminate_backend instead of SIGKILL.
# Inbox:
#  inbox_sigkill    two consumers at once, one backend killed with SIGKILL
#                   (the reset ends the other's too), rerun until the inbox is drained,
#                   then the whole inbox replayed: all duplicates.
#  inbox_terminate  two consumers at once, one terminated with
#                   pg_terminate_backend; the other carries on to the end.
#
# A test-only trigger on the effect tables writes every run of the effect to
# the server log (which a rollback does not undo) and, in the consumer chosen
# as the victim, stops at a gate (an advisory lock the test holds) once a given
# number of effects has run: the test kills the victim there, inside a message
# whose effect has run and not committed, with no timing involved.  The log
# then tells which rolled-back effects ran again.
#
# The PgQ scenarios need PgQ for PostgreSQL 15 (Debian package
# postgresql-15-pgq3) and are skipped, with a message saying so, when the pgq
# extension is not available; the inbox scenarios need nothing more.  pgqd is
# not needed: the test makes the ticks itself with pgq.ticker().

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use Time::HiRes qw(usleep time);

use FindBin;
use lib $FindBin::RealBin;
use PaymentStream;

my $started_at = time;
my $root = abs_path(dirname(__FILE__) . '/../..');
my $pgq_sql   = "$root/examples/pgq/consumer.sql";
my $inbox_sql = "$root/examples/inbox/consumer.sql";
-e $pgq_sql && -e $inbox_sql or die "examples not found under $root/examples";

my $DELAY   = 0.02;    # seconds each effect sleeps in the test trigger
my $GATE    = 20020;   # advisory lock key of the kill gate
my $TIMEOUT = 30;      # seconds any single wait may take

my $node = PostgreSQL::Test::Cluster->new('pgq_consumer');
$node->init;
$node->append_conf(
	'postgresql.conf', q(
restart_after_crash = on
log_line_prefix = '%m [%p] db=%d '
max_connections = 20
));
$node->start;

my $have_pgq = $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_available_extensions WHERE name = 'pgq'}) eq '1';

my $psql = $node->installed_command('psql');

###########################################################################
# Helpers.

# A fixed-seed generator (xorshift32), as for the streams of 001 and 010.
my $rnd = PaymentStream::rng(0x1234567);

# A fresh database with the extensions and the example file loaded as is.
sub new_db
{
	my ($db, $example, @extensions) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, join '', map { "CREATE EXTENSION $_;" } 'idempotent', @extensions);
	my ($ret, $out, $err) = $node->psql($db, '',
		on_error_stop => 1, extra_params => [ '-f', $example ]);
	is($ret, 0, "$db: $example loads") or diag($err);
	unlike($err // '', qr/ERROR|WARNING/, "$db: $example loads without errors or warnings");
	return;
}

# The test-only trigger on the effect table: every run of the effect writes
# "test effect: <key>" to the server log and bumps a sequence (neither is
# undone by a rollback), then sleeps $DELAY.  The gate: in the backend whose
# application_name is 'victim', from the $kill_at-th run on, it waits for
# advisory lock $GATE, which the test holds; the test kills the backend while
# it waits there, i.e. exactly inside a message whose effect has run and not
# committed.  No timing is involved: the victim cannot get past the gate.
sub effect_trigger
{
	my ($db, $table, $column, $kill_at) = @_;
	$node->safe_psql(
		$db, qq{
CREATE SEQUENCE test_effect_runs;
CREATE FUNCTION test_effect() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    RAISE LOG 'test effect: %', NEW.$column;
    IF nextval('test_effect_runs') >= $kill_at
       AND current_setting('application_name') = 'victim' THEN
        PERFORM pg_advisory_xact_lock_shared($GATE);
    END IF;
    PERFORM pg_sleep($DELAY);
    RETURN NEW;
END
\$\$;
CREATE TRIGGER test_effect BEFORE INSERT ON $table
    FOR EACH ROW EXECUTE FUNCTION test_effect();
});
	return;
}

# Hold the gate: a psql of its own that takes advisory lock $GATE and keeps
# its session open until close_gate.
sub hold_gate
{
	my ($db) = @_;
	my %g = (db => $db, in => "SELECT pg_advisory_lock($GATE);\n", out => '', err => '');
	$g{h} = IPC::Run::start([ $psql, '-X', '-q', '-d', $node->connstr($db) ],
		'<', \$g{in}, '>', \$g{out}, '2>', \$g{err});
	my $deadline = time + $TIMEOUT;
	while (time < $deadline)
	{
		$g{h}->pump_nb;
		return \%g
		  if $node->safe_psql($db,
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $GATE "
			  . "AND mode = 'ExclusiveLock' AND granted") eq '1';
		usleep(5_000);
	}
	die "$db: could not take the gate lock";
}

sub close_gate
{
	my ($g) = @_;
	$g->{h}->finish;    # end of input: psql exits, the session ends, the lock goes
	return;
}

# Start "CALL ..." in a psql of its own, under application_name $app; with
# $want_pid, return once its backend is there (with its pid).
sub start_call
{
	my ($db, $app, $call, $want_pid) = @_;
	my %c = (db => $db, app => $app, out => '', err => '');
	$c{h} = IPC::Run::start(
		[
			$psql, '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr($db) . " application_name=$app",
			'-c', $call
		],
		'<', \undef, '>', \$c{out}, '2>', \$c{err});
	return \%c unless $want_pid;
	my $deadline = time + $TIMEOUT;
	while (time < $deadline)
	{
		$c{pid} = $node->safe_psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE application_name = '$app' AND datname = '$db'");
		return \%c if $c{pid} =~ /^\d+$/;
		if (!call_running(\%c))
		{
			finish_call(\%c);
			die "$db: $app ended at once: $c{err}";
		}
		usleep(5_000);
	}
	die "$db: no backend for $app";
}

# Is the psql of a call still running?
sub call_running
{
	my ($c) = @_;
	eval { $c->{h}->pump_nb if $c->{h}->pumpable; 1 };
	return $c->{h}->pumpable;
}

sub run_call
{
	my ($db, $app, $call) = @_;
	my $c = start_call($db, $app, $call);
	$c->{h}->finish;
	$c->{exit} = $c->{h}->result(0);
	return $c;
}

sub finish_call
{
	my ($c) = @_;
	$c->{h}->finish;
	$c->{exit} = $c->{h}->result(0);
	return $c;
}

# Wait until the victim's backend waits at the gate.
sub wait_at_gate
{
	my ($c) = @_;
	my $deadline = time + $TIMEOUT;
	while (time < $deadline)
	{
		my $wait = $node->safe_psql($c->{db},
			"SELECT coalesce(wait_event, '-') FROM pg_stat_activity WHERE pid = $c->{pid}");
		return if $wait eq 'advisory';
		if ($wait eq '')
		{
			finish_call($c);
			die "$c->{db}: $c->{app} ended before reaching the gate: $c->{err}";
		}
		usleep(5_000);
	}
	die "$c->{db}: $c->{app} did not reach the gate in $TIMEOUT s";
}

# SIGKILL a backend and wait until the postmaster has reset and recovered.
sub sigkill_backend
{
	my ($c) = @_;
	my $offset = -s $node->logfile;
	kill('KILL', $c->{pid}) or die "could not kill backend $c->{pid}: $!";
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	$node->poll_query_until('postgres', 'SELECT true')
	  or die 'the server did not come back after the SIGKILL';
	my $log = slurp_file($node->logfile, $offset);
	like($log, qr/server process \(PID $c->{pid}\) was terminated by signal 9/,
		"$c->{db}: the postmaster saw backend $c->{pid} killed with SIGKILL and reset");
	return;
}

sub terminate_backend
{
	my ($c) = @_;
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($c->{pid}, $TIMEOUT * 1000)"),
		't', "$c->{db}: pg_terminate_backend($c->{pid}) ended the consumer's backend");
	return;
}

# Kill the victim at the gate ('sigkill' or 'terminate'), then open the gate.
sub kill_at_gate
{
	my ($c, $gate, $how) = @_;
	wait_at_gate($c);
	$how eq 'sigkill' ? sigkill_backend($c) : terminate_backend($c);
	close_gate($gate);
	finish_call($c);
	isnt($c->{exit}, 0, "$c->{db}: the killed consumer's CALL failed");
	like($c->{err}, qr/server closed the connection unexpectedly|terminating connection/,
		"$c->{db}: the killed consumer lost its connection");
	return;
}

# Lines of the server log written in database $db (by backend $pid, if given)
# that match $re; returns the first capture group of each, in log order.
sub log_matches
{
	my ($db, $re, $pid) = @_;
	my $who = defined $pid ? qr/\[\Q$pid\E\] db=\Q$db\E / : qr/\] db=\Q$db\E /;
	my @m;
	for my $line (split /\n/, slurp_file($node->logfile))
	{
		next unless $line =~ $who;
		push @m, $1 if $line =~ $re;
	}
	return @m;
}

sub count_by
{
	my %n;
	$n{$_}++ for @_;
	return \%n;
}

# "k|v" lines into a hash
sub query_hash
{
	my ($db, $sql) = @_;
	return { map { split /\|/ } split /\n/, $node->safe_psql($db, $sql) };
}

###########################################################################
# PgQ.

# The producer's stream: NPAY payments over NACCT accounts, in NGROUP groups,
# one tick after each group, so each group is one batch.  Some payments are
# inserted twice in a row (a retry that lands in the same batch), some again
# in the next group (a retry that lands in the next batch).
my ($NPAY, $NACCT, $NGROUP) = (36, 5, 3);
my %pay;       # id => [account, amount]
my @groups;    # group => [payment ids in insertion order, with the retries]
for my $i (1 .. $NPAY)
{
	my $id = sprintf('pay-%03d', $i);
	my $g = int(($i - 1) * $NGROUP / $NPAY);
	$pay{$id} = [ 1 + $rnd->($NACCT), sprintf('%d.%02d', 1 + $rnd->(300), $rnd->(100)) ];
	push @{ $groups[$g] }, $id;
	push @{ $groups[$g] }, $id if $i % 5 == 0;    # retry into the same batch
	push @{ $groups[ $g + 1 ] }, $id              # retry into the next batch
	  if $i % 4 == 0 && $g + 1 < $NGROUP;
}
my $nevents = 0;
$nevents += @$_ for @groups;
my %seen_before;
my @new_in_group = map {
	my $n = 0;
	for my $id (@$_) { $n++ unless $seen_before{$id}++ }
	$n
} @groups;    # payments first seen in each group = effects the batch applies
my %expected_balance = map { $_ => 1000 } 1 .. $NACCT;
$expected_balance{ $pay{$_}[0] } -= $pay{$_}[1] for keys %pay;
$_ = sprintf('%.2f', $_) for values %expected_balance;
note "PgQ stream: $nevents events of $NPAY payments in $NGROUP batches "
  . '(' . join(', ', map { scalar(@$_) } @groups) . ' events; '
  . join(', ', @new_in_group) . ' new payments)';

sub pgq_setup
{
	my ($db, $kill_at) = @_;
	new_db($db, $pgq_sql, 'pgq');
	$node->safe_psql(
		$db, qq{
SELECT pgq.create_queue('payments');
SELECT pgq.register_consumer('payments', 'payments_consumer');
INSERT INTO accounts (id, balance) SELECT g, 1000 FROM generate_series(1, $NACCT) g;
});
	effect_trigger($db, 'payments', 'payment_id', $kill_at);

	# Each insert in a transaction of its own (psql autocommit), as producers do;
	# a tick after each group.
	my @ticks;
	for my $g (0 .. $NGROUP - 1)
	{
		my $sql = join '',
		  map { "SELECT produce_payment('$_', $pay{$_}[0], $pay{$_}[1]);\n" } @{ $groups[$g] };
		$node->safe_psql($db, $sql);
		$node->safe_psql($db, q{SELECT pgq.force_tick('payments')});
		push @ticks, $node->safe_psql($db, q{SELECT pgq.ticker('payments')});
	}
	ok(!(grep { $_ !~ /^\d+$/ } @ticks), "$db: one tick after each group of events (@ticks)");
	return;
}

sub consumer_info
{
	my ($db) = @_;
	# limit -1: keep the empty field of a NULL current_batch
	my ($last_tick, $batch) = split /\|/, $node->safe_psql($db,
		q{SELECT last_tick, current_batch FROM pgq.get_consumer_info('payments', 'payments_consumer')}),
	  -1;
	return ($last_tick, $batch);
}

sub pgq_scenario
{
	my ($db, $commit_every, $how) = @_;
	# Kill in the middle of the second batch: the first batch's new payments
	# applied, then 3 of the second's, and the consumer inside the 4th.
	my $runs = $new_in_group[0] + 4;
	pgq_setup($db, $runs);
	my ($tick0) = consumer_info($db);

	my $gate = hold_gate($db);
	my $c = start_call($db, 'victim', "CALL consume_payments(commit_every => $commit_every)", 1);
	kill_at_gate($c, $gate, $how);
	my @killed_runs = log_matches($db, qr/test effect: (\S+)/, $c->{pid});
	is(scalar(@killed_runs), $runs, "$db: the killed consumer ran the effect $runs times");
	my $inflight = $killed_runs[-1];
	note "$db: killed after $runs runs of the effect, inside the one of $inflight";

	# The batch in progress at the kill is still reserved, not finished: PgQ
	# will hand it out again.
	my ($last_tick, $batch) = consumer_info($db);
	like($batch, qr/^\d+$/, "$db: a batch was in progress at the kill (batch $batch)");
	is($last_tick, $tick0 + 1, "$db: the consumer had finished the first batch only");
	my %committed_at_kill =
	  %{ query_hash($db, 'SELECT payment_id, count(*) FROM payments GROUP BY payment_id') };
	ok(!exists $committed_at_kill{$inflight},
		"$db: the payment in flight at the kill did not commit");
	my $outcomes_at_kill = $node->safe_psql($db, 'SELECT count(*) FROM payment_outcomes');
	my $batch2_committed = $node->safe_psql($db,
		"SELECT count(*) FROM payment_outcomes WHERE batch_id = $batch");
	if ($commit_every == 0)
	{
		is(scalar(keys %committed_at_kill), $new_in_group[0],
			"$db: at the kill only the first batch's payments are committed");
		is($batch2_committed, 0, "$db: nothing of the killed batch committed");
		is($outcomes_at_kill, scalar(@{ $groups[0] }),
			"$db: one outcome per event of the first batch");
	}
	else
	{
		is(scalar(keys %committed_at_kill), $runs - 1,
			"$db: at the kill every payment applied but the one in flight is committed");
		cmp_ok($batch2_committed, '>', 0, "$db: events of the unfinished batch committed");
		cmp_ok($batch2_committed, '<', scalar(@{ $groups[1] }), "$db: ... but not all of them");
	}

	# Run the consumer again until the queue is drained (bounded).
	my $calls = 0;
	for my $i (1 .. 5)
	{
		my $r = run_call($db, "pgq_rerun_$i", "CALL consume_payments(commit_every => $commit_every)");
		$calls++;
		is($r->{exit}, 0, "$db: rerun $i of the consumer ran to the end") or diag($r->{err});
		my ($lt, $b) = consumer_info($db);
		last if $b eq '' && $lt == $tick0 + $NGROUP;
	}
	my ($lt_end, $b_end) = consumer_info($db);
	is($lt_end, $tick0 + $NGROUP, "$db: the consumer finished every batch ($calls reruns)");
	is($b_end, '', "$db: no batch left in progress");
	is($node->safe_psql($db, q{SELECT pgq.next_batch('payments', 'payments_consumer')}),
		'', "$db: the queue is drained");

	# The same batch was taken twice and finished once; every other batch
	# taken and finished once.
	my %taken    = %{ count_by(log_matches($db, qr/consume_payments: batch (\d+) taken/)) };
	my %finished = %{ count_by(log_matches($db, qr/consume_payments: batch (\d+) finished/)) };
	is($taken{$batch}, 2, "$db: batch $batch was handed out twice (before and after the kill)");
	is(scalar(keys %taken), $NGROUP, "$db: $NGROUP batches in all");
	is_deeply(\%finished, { map { $_ => 1 } keys %taken }, "$db: every batch finished once");
	is(scalar(grep { $_ != $batch && $taken{$_} != 1 } keys %taken), 0,
		"$db: no other batch was handed out twice");

	# The effects: each payment exactly once, each balance the sum of distinct payments.
	my %count = %{ query_hash($db, 'SELECT payment_id, count(*) FROM payments GROUP BY payment_id') };
	is_deeply([ sort keys %count ], [ sort keys %pay ], "$db: every payment was applied");
	is(scalar(grep { $count{$_} != 1 } keys %count), 0, "$db: no payment was applied twice");
	my $total = 0;
	$total += $pay{$_}[1] for keys %pay;
	is($node->safe_psql($db, q{SELECT count(*) || '|' || sum(amount) FROM payments}),
		sprintf('%d|%.2f', $NPAY, $total),
		"$db: payments rows and total amount are those of the distinct payments");
	is_deeply(query_hash($db, 'SELECT id, balance FROM accounts'), \%expected_balance,
		"$db: every account balance is 1000 minus its distinct payments");
	is_deeply(
		query_hash($db, q{SELECT payment_id, account_id || ':' || amount FROM payments}),
		{ map { $_ => "$pay{$_}[0]:$pay{$_}[1]" } keys %pay },
		"$db: each payment charged its own account its own amount");
	is( $node->safe_psql($db,
			q{SELECT count(*) || '|' || count(DISTINCT key) FROM idem_ledger WHERE key LIKE 'payment:%'}),
		"$NPAY|$NPAY", "$db: one ledger row per distinct payment");

	# What the consumer saw: [id, batch_id, ev_id, payment_id, status], in order.
	my @o = map { [ split /\|/ ] } split /\n/, $node->safe_psql($db,
		'SELECT id, batch_id, ev_id, payment_id, status FROM payment_outcomes ORDER BY id');
	my %applied_per_pay = %{ count_by(map { $_->[3] } grep { $_->[4] eq 'applied' } @o) };
	is(scalar(keys %applied_per_pay), $NPAY, "$db: every payment reported applied ...");
	is(scalar(grep { $_ != 1 } values %applied_per_pay), 0, "$db: ... exactly once");
	my %deliveries;    # ev_id => [outcome rows]
	push @{ $deliveries{ $_->[2] } }, $_ for @o;
	is(scalar(keys %deliveries), $nevents, "$db: an outcome for every event of the queue");
	my @twice = grep { @{ $deliveries{$_} } > 1 } keys %deliveries;
	my $dups = grep { $_->[4] eq 'duplicate' } @o;
	my %runs = %{ count_by(log_matches($db, qr/test effect: (\S+)/)) };
	my @ran_twice = sort grep { $runs{$_} == 2 } keys %runs;
	is(scalar(grep { $runs{$_} > 2 } keys %runs), 0, "$db: no effect ran three times");
	if ($commit_every == 0)
	{
		is(scalar(@o), $nevents, "$db: one outcome per event (the killed batch left none)");
		is($dups, $nevents - $NPAY,
			"$db: the producer retries, and only they, came back as duplicates");
		# The killed batch's effects ran, were rolled back, and ran again.
		is_deeply(\@ran_twice, [ sort @killed_runs[ $new_in_group[0] .. $#killed_runs ] ],
			"$db: the effects the kill rolled back ran again, once each ("
			  . scalar(@ran_twice) . ')');
	}
	else
	{
		# Events committed before the kill came again with their batch, as duplicates.
		is(scalar(@twice), $batch2_committed,
			"$db: each event committed before the kill was delivered twice ($batch2_committed)");
		is(scalar(grep { @{ $deliveries{$_} } != 2 } @twice), 0, "$db: ... not more");
		is(scalar(grep { my $ev = $_; grep { $_->[1] != $batch } @{ $deliveries{$ev} } } @twice),
			0, "$db: both deliveries of them came in batch $batch");
		is(scalar(grep { $deliveries{$_}[1][4] ne 'duplicate' } @twice), 0,
			"$db: their second delivery came back as duplicate");
		my $first_applied = grep { $deliveries{$_}[0][4] eq 'applied' } @twice;
		is($first_applied, $runs - 1 - $new_in_group[0],
			"$db: ... $first_applied of them had been applied before the kill");
		is($dups, $nevents - $NPAY + $batch2_committed,
			"$db: duplicates = producer retries + redelivered committed events");
		# Only the effect in flight at the kill ran twice.
		is_deeply(\@ran_twice, [$inflight],
			"$db: only the effect in flight at the kill ran again");
	}
	return;
}

SKIP:
{
	skip 'PgQ is not installed, so its scenarios are skipped: the pgq extension for '
	  . 'PostgreSQL 15 comes with the Debian package postgresql-15-pgq3 '
	  . '(apt-get install postgresql-15-pgq3)', 1
	  unless $have_pgq;
	pgq_scenario('batch_sigkill',   0, 'sigkill');
	pgq_scenario('event_sigkill',   1, 'sigkill');
	pgq_scenario('event_terminate', 1, 'terminate');
}

###########################################################################
# Inbox.

# NORD orders over 4 SKUs; some delivered twice in a row, some again later.
my $NORD = 40;
my %ord;    # id => [sku, qty]
my @inbox;
my @later;
for my $i (1 .. $NORD)
{
	my $id = sprintf('ord-%03d', $i);
	$ord{$id} = [ 'sku-' . (1 + $rnd->(4)), 1 + $rnd->(9) ];
	push @inbox, $id;
	push @inbox, $id if $rnd->(100) < 25;
	push @later, [ $i + 3 + $rnd->(15), $id ] if $rnd->(100) < 20;
	push @inbox, map { $_->[1] } grep { $_->[0] == $i } @later;
}
push @inbox, map { $_->[1] } grep { $_->[0] > $NORD } @later;
my $nrows = @inbox;
my %expected_stock = map { ("sku-$_" => 1000) } 1 .. 4;
$expected_stock{ $ord{$_}[0] } -= $ord{$_}[1] for keys %ord;
note "inbox: $nrows rows of $NORD orders";

sub inbox_check
{
	my ($db, $what) = @_;
	my %count = %{ query_hash($db, 'SELECT order_id, count(*) FROM orders GROUP BY order_id') };
	is_deeply([ sort keys %count ], [ sort keys %ord ], "$db$what: every order was booked");
	is(scalar(grep { $count{$_} != 1 } keys %count), 0, "$db$what: no order was booked twice");
	is_deeply(query_hash($db, 'SELECT sku, on_hand FROM stock'), \%expected_stock,
		"$db$what: stock is 1000 minus the distinct orders' quantities");
	is_deeply(
		query_hash($db, q{SELECT order_id, sku || ':' || qty FROM orders}),
		{ map { $_ => "$ord{$_}[0]:$ord{$_}[1]" } keys %ord },
		"$db$what: each order booked with its own sku and quantity");
	is($node->safe_psql($db, q{SELECT count(*) FROM idem_ledger WHERE key LIKE 'order:%'}),
		$NORD, "$db$what: one ledger row per distinct order");
	is( $node->safe_psql($db,
			q{SELECT count(*) FILTER (WHERE processed_at IS NULL) || '|'
			      || count(*) FILTER (WHERE outcome = 'applied') || '|'
			      || count(*) FILTER (WHERE outcome = 'duplicate') || '|'
			      || count(DISTINCT msg_key) FILTER (WHERE outcome = 'applied')
			  FROM inbox}),
		"0|$NORD|" . ($nrows - $NORD) . "|$NORD",
		"$db$what: every row processed; one applied row per order, the retries duplicates");
	return;
}

sub inbox_scenario
{
	my ($db, $how) = @_;
	new_db($db, $inbox_sql);
	$node->safe_psql($db,
		q{INSERT INTO stock SELECT 'sku-' || g, 1000 FROM generate_series(1, 4) g;}
		  . join('', map { "INSERT INTO inbox (msg_key, payload) VALUES ('$_', "
				  . "'{\"sku\": \"$ord{$_}[0]\", \"qty\": $ord{$_}[1]}');\n" } @inbox));
	# Two consumers at once; kill the first mid-message once a third of the
	# orders have been booked.
	effect_trigger($db, 'orders', 'order_id', int($NORD / 3));
	my $gate = hold_gate($db);
	my @c = (start_call($db, 'victim', 'CALL inbox_consume()', 1),
		start_call($db, 'other', 'CALL inbox_consume()', 1));
	kill_at_gate($c[0], $gate, $how);
	finish_call($c[1]);
	my @killed_runs = log_matches($db, qr/test effect: (\S+)/, $c[0]{pid});
	my @other_runs  = log_matches($db, qr/test effect: (\S+)/, $c[1]{pid});
	cmp_ok(scalar(@killed_runs), '>', 0, "$db: the killed consumer had booked orders");
	cmp_ok(scalar(@other_runs), '>', 0, "$db: the other consumer had booked orders");
	my $inflight = $killed_runs[-1];
	note "$db: the victim was killed inside its effect number "
	  . scalar(@killed_runs) . " ($inflight); the other consumer "
	  . ($c[1]{exit} == 0 ? 'ran to the end' : 'was cut off by the reset');

	if ($how eq 'sigkill')
	{
		my ($unprocessed, $booked, $applied, $inflight_booked) = split /\|/,
		  $node->safe_psql($db,
			qq{SELECT (SELECT count(*) FROM inbox WHERE processed_at IS NULL),
			          (SELECT count(*) FROM orders),
			          (SELECT count(*) FROM inbox WHERE outcome = 'applied'),
			          (SELECT count(*) FROM orders WHERE order_id = '$inflight')});
		cmp_ok($unprocessed, '>', 0, "$db: rows were left unprocessed at the kill");
		is($booked, $applied,
			"$db: at the kill, orders booked = rows marked applied (no half-done message)");
		is($inflight_booked, 0, "$db: the order in flight at the kill did not commit");
	}
	else
	{
		is($c[1]{exit}, 0, "$db: the other consumer carried on to the end")
		  or diag($c[1]{err});
	}
	# Run a consumer again until the inbox is drained (bounded).
	for my $i (1 .. 3)
	{
		last if $node->safe_psql($db,
			'SELECT count(*) FROM inbox WHERE processed_at IS NULL') eq '0';
		my $r = run_call($db, "inbox_rerun_$i", 'CALL inbox_consume()');
		is($r->{exit}, 0, "$db: rerun $i ran to the end") or diag($r->{err});
	}
	inbox_check($db, '');

	# The message in flight at the kill ran its effect, was rolled back, and
	# ran again; so, after a SIGKILL, may the other consumer's; nothing else.
	my %runs = %{ count_by(log_matches($db, qr/test effect: (\S+)/)) };
	my @ran_twice = sort grep { $runs{$_} == 2 } keys %runs;
	is(scalar(grep { $runs{$_} > 2 } keys %runs), 0, "$db: no effect ran three times");
	if ($how eq 'sigkill')
	{
		ok(scalar(grep { $_ eq $inflight } @ran_twice) == 1
			  && !(grep { $_ ne $inflight && $_ ne ($other_runs[-1] // '') } @ran_twice),
			"$db: the messages in flight at the kill were handled again, nothing else (@ran_twice)");
	}
	else
	{
		is_deeply(\@ran_twice, [$inflight],
			"$db: the message in flight at the kill was handled again, nothing else");
	}

	if ($how eq 'sigkill')
	{
		# Replay the whole inbox (an operator resets it): all duplicates.
		my $state = q{SELECT (SELECT string_agg(order_id || sku || qty, ',' ORDER BY order_id) FROM orders),
		                     (SELECT string_agg(sku || on_hand, ',' ORDER BY sku) FROM stock)};
		my $before = $node->safe_psql($db, $state);
		$node->safe_psql($db, 'UPDATE inbox SET processed_at = NULL, outcome = NULL');
		my $r = run_call($db, 'inbox_replay', 'CALL inbox_consume()');
		is($r->{exit}, 0, "$db: the replay ran to the end") or diag($r->{err});
		is($node->safe_psql($db,
				q{SELECT count(*) || '|' || count(*) FILTER (WHERE outcome = 'duplicate') FROM inbox}),
			"$nrows|$nrows", "$db: every replayed row came back as duplicate");
		is($node->safe_psql($db, $state), $before, "$db: the replay changed no order and no stock");
	}
	return;
}

inbox_scenario('inbox_sigkill',   'sigkill');
inbox_scenario('inbox_terminate', 'terminate');

$node->stop;
note sprintf('runtime %.1f s', time - $started_at);
done_testing();
