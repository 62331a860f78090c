
# 001_crash_redelivery.pl
#
# An at-least-once message stream consumed through idem_apply by concurrent
# clients, with the server crashing under them, twice, and the broker
# redelivering everything that was not acknowledged.  The promise under test
# (SPEC.md, "A crash at any moment loses no committed key and leaves no
# half-applied effect"): every payment is applied exactly once, whatever the
# duplicates in the stream, the races between partitions and the crashes.
#
# The model:
#  - NPAY payments (payment id, account, amount), spread over NPART
#    partitions.  A partition's stream delivers some payments twice in a row
#    (a redelivery after a lost ack), some again much later (a rebalance), and
#    some payments also land on a second partition (a producer retry), where
#    another client races for the same key.
#  - One client (psql) per partition consumes its stream in order, one message
#    per transaction (autocommit): SET app.delivery to the message's address,
#    then SELECT ... FROM idem_apply(payment id, NULL, <one statement>, args).
#    The statement inserts a row into payments (NOT unique: applying twice
#    would show as two rows) and adds the amount to the account's balance.
#    psql prints an "ack" row only once the autocommit transaction has
#    committed.
#  - The broker: the test harness reads the clients' ack lines.  At the crash
#    it takes its view of the acks, lets the clients run on for a moment
#    (their acks from then on are lost, as a consumer's ack to the broker can
#    be), and crashes the server.  Every partition is then redelivered from
#    the message after its last acknowledged one, so messages that committed
#    but were never acknowledged are delivered again and must come back as
#    duplicates.
#  - Crash 1: "power loss": every server process stopped and killed with
#    SIGKILL at once, then a fresh start (crash recovery from WAL).
#    Crash 2: SIGKILL of one consumer's backend; the postmaster resets every
#    backend and recovers (restart_after_crash).
#  - Finally the rest is delivered, then every partition is replayed from its
#    first message (a consumer group reset): all of it must be duplicates and
#    change nothing.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib $FindBin::RealBin;
use PaymentStream;
use IPC::Run;
use Time::HiRes qw(usleep time);

my $started_at = time;

my $NPART = 4;       # partitions, one client each
my $NPAY  = 2000;    # distinct payments
my $NACCT = 25;      # accounts (shared by all partitions)

###########################################################################
# The message streams, from a fixed seed (xorshift32: same on every perl).

my %generated = PaymentStream::generate(
	partitions => $NPART,
	payments   => $NPAY,
	accounts   => $NACCT,
	seed       => 0x2545F491);
my %pay              = %{ $generated{pay} };
my @stream           = @{ $generated{stream} };
my @len              = @{ $generated{len} };
my $nmsg             = $generated{nmsg};
my %expected_balance = %{ $generated{balance} };

{
	my %parts_of;
	for my $p (0 .. $NPART - 1)
	{
		$parts_of{$_}{$p} = 1 for @{ $stream[$p] };
	}
	my $cross = grep { keys %{ $parts_of{$_} } > 1 } keys %parts_of;
	my $dups  = $nmsg - scalar(keys %parts_of);
	note "streams: @len messages (total $nmsg), "
	  . scalar(keys %pay)
	  . " distinct payments, $dups duplicate deliveries, "
	  . "$cross payments on more than one partition";
	is(scalar(keys %parts_of), $NPAY, 'every payment is in the streams');
	cmp_ok($dups,  '>', $NPAY / 5, 'the streams carry many duplicates');
	cmp_ok($cross, '>', $NPAY / 20,
		'many payments are on two partitions (clients race on them)');
}

###########################################################################
# The server.

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf(
	'postgresql.conf', qq(
restart_after_crash = on
log_statement = none
max_connections = 30
));
$node->start;

$node->safe_psql(
	'postgres', qq(
CREATE EXTENSION idempotent;
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
-- NOT unique on purpose: a payment applied twice shows as two rows
CREATE TABLE payments (
    payment_id text NOT NULL,
    account int NOT NULL REFERENCES accounts,
    amount bigint NOT NULL,
    delivery text NOT NULL   -- epoch:partition:seq of the message that applied it
);
INSERT INTO accounts (id) SELECT g FROM generate_series(1, $NACCT) g;
));

# One statement: record the payment and move the money.  The delivery address
# comes from a setting, not from the arguments, so that every delivery of a
# payment is the same request (same statement, same arguments).
my $statement =
    q{WITH p AS (INSERT INTO payments (payment_id, account, amount, delivery) }
  . q{VALUES ($1, $2, $3, current_setting('app.delivery')) RETURNING account, amount) }
  . q{UPDATE accounts a SET balance = a.balance + p.amount FROM p }
  . q{WHERE a.id = p.account RETURNING a.id AS account, a.balance AS balance};

my $tempdir = PostgreSQL::Test::Utils::tempdir;
my $psql    = $node->installed_command('psql');

###########################################################################
# Clients and the broker.

my @acked = map { 0 } 1 .. $NPART;    # broker: last acknowledged seq per partition
my @printed;    # every ack line any client printed: [epoch, p, seq, status, applied, rows]
my @epoch_from; # epoch => [first seq delivered per partition]

# Write the script of partition $p for messages $from .. $to and start psql.
sub start_client
{
	my ($epoch, $p, $from, $to, $think) = @_;
	my $script = "$tempdir/e${epoch}_p$p.sql";
	open my $fh, '>', $script or die "could not write $script: $!";
	for my $seq ($from .. $to)
	{
		my $id = $stream[$p][ $seq - 1 ];
		my ($acct, $amount) = @{ $pay{$id} };
		# the consumer's own work between two messages (keeps the clients
		# slow enough for the crash to land mid-stream)
		print $fh "DO \$\$BEGIN PERFORM pg_sleep($think); END\$\$;\n" if $think;
		print $fh "SET app.delivery = '$epoch:$p:$seq';\n";
		print $fh "SELECT 'ack', $p, $seq, o.status, o.applied, o.rows "
		  . "FROM idem_apply('$id', NULL, \$stmt\$$statement\$stmt\$, "
		  . "'$id'::text, $acct, $amount) AS o;\n";
	}
	close $fh;
	my $out = "$tempdir/e${epoch}_p$p.out";
	my $err = "$tempdir/e${epoch}_p$p.err";
	my $h   = IPC::Run::start(
		[
			$psql, '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres') . " application_name=consumer$p",
			'-f', $script
		],
		'<', \undef, '>', $out, '2>', $err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return { p => $p, h => $h, out => $out, err => $err, from => $from, to => $to };
}


# Gone, and reaped: a new postmaster refuses to start while the pid in
# postmaster.pid still answers kill 0, even as a zombie.
sub pid_gone
{
	my ($pid) = @_;
	return !kill(0, $pid);
}

sub children_of
{
	my ($ppid) = @_;
	my @kids;
	opendir my $dh, '/proc' or die "no /proc: $!";
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		open my $fh, '<', "/proc/$pid/stat" or next;
		my $stat = <$fh>;
		close $fh;
		push @kids, $pid if defined $stat && $stat =~ /\)\s+\S\s+(\d+)\s/ && $1 == $ppid;
	}
	closedir $dh;
	return @kids;
}

# Crash 1: stop every server process, then kill them all with SIGKILL; no
# process gets to react to the others' deaths.  Then start afresh.
sub crash_power_loss
{
	my $pidfile = $node->data_dir . '/postmaster.pid';
	my ($pm) = split /\n/, slurp_file($pidfile);
	kill 'STOP', $pm;
	my @kids = children_of($pm);
	kill 'STOP', @kids;
	kill 'KILL', $pm, @kids;
	note "killed postmaster $pm and " . scalar(@kids) . " children with SIGKILL";
	$node->kill9;    # the node forgets its postmaster (already dead)
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	usleep(20_000) while (grep { !pid_gone($_) } $pm, @kids) && time < $deadline;
	die "server processes survived SIGKILL" if grep { !pid_gone($_) } $pm, @kids;
	return;
}

# Crash 2: SIGKILL one consumer's backend; the postmaster resets all others.
sub crash_backend
{
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'consumer%' ORDER BY application_name LIMIT 1");
	die "no consumer has a backend" unless $pid =~ /^\d+$/;
	kill('KILL', $pid) or die "could not kill backend $pid: $!";
	note "killed backend $pid of a consumer with SIGKILL";
	return;
}

# Deliver every partition from the message after its last acknowledged one
# (or from $replay_from, when given) to its end.  With $crash, crash the
# server once the acks of this epoch reach $fraction of what it delivers.
sub run_epoch
{
	my ($epoch, %opt) = @_;
	my @from = map { $opt{replay_from} // ($acked[$_] + 1) } 0 .. $NPART - 1;
	$epoch_from[$epoch] = [@from];
	my @clients;
	my $todo = 0;
	for my $p (0 .. $NPART - 1)
	{
		next if $from[$p] > $len[$p];
		push @clients, start_client($epoch, $p, $from[$p], $len[$p], $opt{think});
		$todo += $len[$p] - $from[$p] + 1;
	}
	note "epoch $epoch ($opt{kind}): delivering $todo messages, from @from";

	my @broker_view;
	if ($opt{crash})
	{
		my $target   = int($todo * $opt{fraction});
		my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
		my $seen     = 0;
		while (time < $deadline)
		{
			$seen = 0;
			$seen += scalar(PaymentStream::read_acks($_, $epoch)) for @clients;
			last if $seen >= $target;
			usleep(5_000);
		}
		die "clients acknowledged only $seen of $target messages" if $seen < $target;

		# The broker's view: acks it has received.  Those printed from now
		# on are lost, as an ack to the broker can be.
		@broker_view = map { PaymentStream::read_acks($_, $epoch) } @clients;
		usleep(30_000);
		$opt{crash}->();
	}

	for my $c (@clients)
	{
		$c->{h}->finish;
		$c->{exit} = $c->{h}->result(0);
		$c->{stderr} = slurp_file($c->{err});
		my @acks = PaymentStream::read_acks($c, $epoch);
		$c->{acks} = \@acks;
		push @printed, @acks;

		my @seqs = map { $_->[2] } @acks;
		is_deeply(\@seqs, [ $c->{from} .. $c->{from} + @seqs - 1 ],
			"epoch $epoch, partition $c->{p}: acks in order from message $c->{from}");
		if ($opt{crash})
		{
			isnt($c->{exit}, 0,
				"epoch $epoch, partition $c->{p}: the crash cut the client off mid-stream");
			cmp_ok(scalar(@acks), '<', $c->{to} - $c->{from} + 1,
				"epoch $epoch, partition $c->{p}: not every message was acknowledged");
			like($c->{stderr}, qr/server closed the connection unexpectedly|connection to server was lost|terminating connection/,
				"epoch $epoch, partition $c->{p}: the client lost its connection");
			unlike($c->{stderr}, qr/\bERROR:/,
				"epoch $epoch, partition $c->{p}: no SQL error before the crash");
		}
		else
		{
			is($c->{exit}, 0, "epoch $epoch, partition $c->{p}: client ran to the end")
			  or diag("stderr: $c->{stderr}");
			is(scalar(@acks), $c->{to} - $c->{from} + 1,
				"epoch $epoch, partition $c->{p}: every message acknowledged");
			is($c->{stderr}, '', "epoch $epoch, partition $c->{p}: no errors");
		}
	}

	# The broker moves the partitions' offsets past what it saw acknowledged.
	my @view = $opt{crash} ? @broker_view : map { @{ $_->{acks} } } @clients;
	for my $a (@view)
	{
		my (undef, $p, $seq) = @$a;
		die "ack out of order" unless $seq == $acked[$p] + 1 || defined $opt{replay_from};
		$acked[$p] = $seq unless defined $opt{replay_from};
	}
	my $lost = 0;
	$lost += scalar(@{ $_->{acks} }) for @clients;
	$lost -= scalar(@view);
	note "epoch $epoch: broker saw "
	  . scalar(@view)
	  . " acks, $lost acks printed after its view were lost";
	return \@clients;
}

###########################################################################
# Run: crash, recover, redeliver, crash again, redeliver to the end.

# Epoch 1: crash 1 ("power loss") a quarter of the way in.
run_epoch(1, kind => 'power loss', crash => \&crash_power_loss, fraction => 0.25,
	think => 0.002);
{
	my $offset = -s $node->logfile;
	$node->start;
	my $log = slurp_file($node->logfile, $offset);
	like($log, qr/database system was not properly shut down; automatic recovery in progress/,
		'crash 1: the server recovered from WAL');
}

# Epoch 2: crash 2 (a backend killed) a third of the way into the rest.
{
	my $offset = -s $node->logfile;
	run_epoch(2, kind => 'backend kill', crash => \&crash_backend, fraction => 0.35,
		think => 0.002);
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	$node->poll_query_until('postgres', 'SELECT true')
	  or die 'the server did not come back after crash 2';
	my $log = slurp_file($node->logfile, $offset);
	like($log, qr/server process \(PID \d+\) was terminated by signal 9/,
		'crash 2: the postmaster saw its backend killed');
	like($log, qr/database system was interrupted|automatic recovery in progress/,
		'crash 2: the server recovered from WAL');
}

# Epoch 3: the rest, no crash.
run_epoch(3, kind => 'clean', think => 0.001);
is_deeply(\@acked, \@len, 'every message of every partition was acknowledged');

###########################################################################
# The effects: every payment exactly once.

my $effects_query = q{
SELECT (SELECT string_agg(payment_id || '=' || n, ',' ORDER BY payment_id)
          FROM (SELECT payment_id, count(*) AS n FROM payments GROUP BY payment_id) s),
       (SELECT string_agg(id || '=' || balance, ',' ORDER BY id) FROM accounts),
       (SELECT string_agg(key, ',' ORDER BY key) FROM idem_ledger)};
my $effects = $node->safe_psql('postgres', $effects_query);

my %count = map { split /=/ } split /,/,
  $node->safe_psql('postgres',
	'SELECT string_agg(payment_id || \'=\' || n, \',\') FROM '
	  . '(SELECT payment_id, count(*) AS n FROM payments GROUP BY payment_id) s');
my @twice = grep { $count{$_} != 1 } sort keys %count;
is(scalar(@twice), 0, 'no payment was applied more than once')
  or diag("applied more than once: @twice[0 .. ($#twice < 9 ? $#twice : 9)]");
is_deeply([ sort keys %count ], [ sort keys %pay ],
	'the payments applied are exactly the distinct payments of the streams');
is( $node->safe_psql('postgres', 'SELECT count(*) FROM payments'),
	scalar(keys %pay),
	'one payments row per distinct payment');

my %balance = map { split /=/ } split /,/,
  $node->safe_psql('postgres', q{SELECT string_agg(id || '=' || balance, ',') FROM accounts});
is_deeply(\%balance, \%expected_balance,
	'each account balance is the sum of its distinct payments');

# Each payments row points at a delivery of that payment.
{
	my @bad;
	for my $row (split /\n/,
		$node->safe_psql('postgres', q{SELECT payment_id, delivery FROM payments}))
	{
		my ($id, $delivery) = split /\|/, $row;
		my ($e, $p, $seq) = split /:/, $delivery;
		push @bad, $row
		  unless defined $seq && $e >= 1 && $e <= 3 && ($stream[$p][ $seq - 1 ] // '') eq $id;
	}
	is(scalar(@bad), 0, 'every payment was applied by a delivery of that payment')
	  or diag("@bad[0 .. ($#bad < 9 ? $#bad : 9)]");
}

# The ledger: one row per distinct payment, recorded by policy once.
{
	my %ledger = map { $_ => 1 } split /\n/,
	  $node->safe_psql('postgres', 'SELECT key FROM idem_ledger');
	my @missing = grep { !$ledger{$_} } sort keys %pay;
	my @extra   = grep { !$pay{$_} } sort keys %ledger;
	is(scalar(keys %ledger), scalar(keys %pay),
		'the ledger has one row per distinct payment');
	ok(!@missing && !@extra, 'the ledger has exactly the distinct payment ids')
	  or diag("missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]; "
		  . "extra: @extra[0 .. ($#extra < 9 ? $#extra : 9)]");
}
is( $node->safe_psql('postgres',
		q{SELECT count(*) FILTER (WHERE policy <> 'o' OR version IS NOT NULL
		                            OR rows IS DISTINCT FROM 1 OR fingerprint IS NULL
		                            OR result IS NULL)
		  FROM idem_ledger}),
	'0',
	'every ledger row is a once key with the statement\'s rows, result and fingerprint');

###########################################################################
# The outcomes the clients saw.

my %applied_acks;    # payment => [ack, ...] with status applied
my %status_count;
my @bad_acks;
for my $a (@printed)
{
	my ($e, $p, $seq, $status, $applied, $rows) = @$a;
	my $id = $stream[$p][ $seq - 1 ];
	$status_count{$status}++;
	push @{ $applied_acks{$id} }, $a if $status eq 'applied';
	push @bad_acks, join(':', @$a)
	  unless ($status eq 'applied' && $applied eq 't' && $rows eq '1')
	  || ($status eq 'duplicate' && $applied eq 'f' && $rows eq '1');
}
note 'outcomes acknowledged: '
  . join(', ', map { "$_ $status_count{$_}" } sort keys %status_count);
is(scalar(@bad_acks), 0,
	'every outcome is applied or duplicate, with the rows of the one application')
  or diag("@bad_acks[0 .. ($#bad_acks < 9 ? $#bad_acks : 9)]");
cmp_ok($status_count{duplicate} // 0, '>', 0, 'duplicates were reported');

my %delivery_of = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', q{SELECT payment_id, delivery FROM payments});
{
	my (@several, @mismatch);
	for my $id (sort keys %applied_acks)
	{
		my @a = @{ $applied_acks{$id} };
		push @several, $id if @a > 1;
		push @mismatch, $id if join(':', @{ $a[0] }[ 0 .. 2 ]) ne $delivery_of{$id};
	}
	is(scalar(@several), 0, 'no payment was reported applied twice')
	  or diag("@several");
	is(scalar(@mismatch), 0,
		'an applied outcome is reported by the delivery whose effect is in payments')
	  or diag("@mismatch");
	my $silent = grep { !$applied_acks{$_} } keys %pay;
	note "$silent payments committed without their client seeing the outcome";
}

# Messages committed before a crash but not acknowledged: the broker
# delivered them again, and they must have come back as duplicates.
for my $e (1, 2)
{
	my ($redelivered, @wrong) = (0);
	for my $p (0 .. $NPART - 1)
	{
		# first seq delivered again after the crash of epoch $e
		my $resume = $epoch_from[ $e + 1 ][$p];
		for my $seq ($resume .. $len[$p])
		{
			my $id = $stream[$p][ $seq - 1 ];
			next unless ($delivery_of{$id} // '') eq "$e:$p:$seq";
			# the first ack of this very message after the crash
			my ($again) = grep { $_->[0] > $e && $_->[0] <= 3 && $_->[1] == $p && $_->[2] == $seq } @printed;
			next unless $again;
			$redelivered++;
			push @wrong, "$p:$seq $again->[3]" unless $again->[3] eq 'duplicate';
		}
	}
	note "crash $e: $redelivered messages committed before it were redelivered";
	cmp_ok($redelivered, '>', 0,
		"crash $e: messages committed but not acknowledged before it were redelivered");
	is(scalar(@wrong), 0,
		"crash $e: each of them came back as a duplicate")
	  or diag("@wrong");
}

###########################################################################
# A consumer group reset: every partition replayed from its first message.

my $before = $node->safe_psql('postgres', $effects_query);
is($before, $effects, 'nothing changed since the checks above');
{
	my $n_before = scalar @printed;
	run_epoch(4, kind => 'replay', replay_from => 1);
	my @replay = @printed[ $n_before .. $#printed ];
	is(scalar(@replay), $nmsg, 'the replay acknowledged every message');
	is(scalar(grep { $_->[3] ne 'duplicate' || $_->[5] ne '1' } @replay),
		0, 'every replayed message is a duplicate');
}
is($node->safe_psql('postgres', $effects_query),
	$effects, 'the replay changed no payment, no balance, no ledger row');

# The ledger's index agrees with its heap after two crash recoveries.
SKIP:
{
	skip 'amcheck is not available', 1
	  unless $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'}) eq '1';
	$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');
	my ($ret, $out, $err) = $node->psql('postgres',
		q{SELECT bt_index_check('idem_ledger_pkey'::regclass, true)});
	is($ret, 0, 'amcheck: the ledger index is consistent with the heap')
	  or diag($err);
}

$node->stop;
note sprintf('runtime %.1f s', time - $started_at);
done_testing();
