
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
#  - The library is preloaded: a writer then trusts the probe it made before
#    taking a key's lock when no release of the lock was counted in between
#    (src/key_locks.c), and the clients racing for a key on two partitions,
#    before and after each crash, are where that must hold.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib $FindBin::RealBin;
use PaymentStream;
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

cmp_ok(PaymentStream::check_streams(\%generated, $NPAY),
	'>', $NPAY / 20, 'many payments are on two partitions (clients race on them)');

###########################################################################
# The server.

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf(
	'postgresql.conf', qq(
restart_after_crash = on
log_statement = none
max_connections = 30
shared_preload_libraries = 'idempotent'
idempotent.purge_interval = 0
));
$node->start;
PaymentStream::create_schema($node, $NACCT);

my $tempdir = PostgreSQL::Test::Utils::tempdir;

###########################################################################
# Clients and the broker.

my @acked = map { 0 } 1 .. $NPART;    # broker: last acknowledged seq per partition
my @printed;    # every ack line any client printed: [epoch, p, seq, status, applied, rows]
my @epoch_from; # epoch => [first seq delivered per partition]

# Crash 1: every server process stopped, then killed with SIGKILL; no
# process gets to react to the others' deaths.  Then start afresh.
sub crash_power_loss
{
	PaymentStream::kill_server($node);
	return;
}

# Crash 2: SIGKILL one consumer's backend; the postmaster resets all others.
sub crash_backend
{
	PaymentStream::kill_consumer_backend($node);
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
	my ($clients, $todo) = PaymentStream::start_clients(
		node    => $node,
		streams => \%generated,
		epoch   => $epoch,
		from    => \@from,
		files   => "$tempdir/",
		think   => $opt{think});
	my @clients = @$clients;
	note "epoch $epoch ($opt{kind}): delivering $todo messages, from @from";

	my @broker_view;
	if ($opt{crash})
	{
		PaymentStream::wait_acks(\@clients, $epoch, int($todo * $opt{fraction}));

		# The broker's view: acks it has received.  Those printed from now
		# on are lost, as an ack to the broker can be.
		@broker_view = map { PaymentStream::read_acks($_, $epoch) } @clients;
		usleep(30_000);
		$opt{crash}->();
	}

	for my $c (@clients)
	{
		my $what = "epoch $epoch, partition $c->{p}";
		my @acks = PaymentStream::finish_client($c, $epoch, $what);
		push @printed, @acks;

		if ($opt{crash})
		{
			isnt($c->{exit}, 0, "$what: the crash cut the client off mid-stream");
			cmp_ok(scalar(@acks), '<', $c->{to} - $c->{from} + 1,
				"$what: not every message was acknowledged");
			like($c->{stderr}, qr/server closed the connection unexpectedly|connection to server was lost|terminating connection/,
				"$what: the client lost its connection");
			unlike($c->{stderr}, qr/\bERROR:/, "$what: no SQL error before the crash");
		}
		else
		{
			is($c->{exit}, 0, "$what: client ran to the end")
			  or diag("stderr: $c->{stderr}");
			is(scalar(@acks), $c->{to} - $c->{from} + 1, "$what: every message acknowledged");
			is($c->{stderr}, '', "$what: no errors");
		}
	}

	# The broker moves the partitions' offsets past what it saw acknowledged.
	my @view = $opt{crash} ? @broker_view : map { @{ $_->{acks} } } @clients;
	PaymentStream::move_offsets(\@acked, @view) unless defined $opt{replay_from};
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
  or diag('applied more than once: ' . PaymentStream::show(@twice));
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
	  or diag(PaymentStream::show(@bad));
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
	  or diag('missing: '
		  . PaymentStream::show(@missing)
		  . '; extra: '
		  . PaymentStream::show(@extra));
}
is( $node->safe_psql('postgres',
		q{SELECT count(*) FILTER (WHERE policy <> 'o' OR version IS NOT NULL
		                            OR rows IS DISTINCT FROM 1 OR request_hash IS NULL
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
  or diag(PaymentStream::show(@bad_acks));
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
PaymentStream::check_ledger_index($node);

$node->stop;
note sprintf('runtime %.1f s', time - $started_at);
done_testing();
