
# 040_batch_consumers.pl
#
# Batch consumers: an at-least-once payment stream consumed through
# idem_claim_batch by concurrent clients, a batch of messages per
# transaction, with the server crashing under them twice and the broker
# redelivering every batch that was not acknowledged.  The promise under
# test (SPEC.md, "Batches" and "A crash at any moment loses no committed key
# and leaves no half-applied effect"): every payment is applied exactly once,
# whatever the duplicates inside a batch and across partitions, the
# concurrent batches over the same keys in different orders, and the crashes.
#
# The model:
#  - The streams of 001 (PaymentStream): payments redelivered right after,
#    much later, and on a second partition, where another client's batch
#    races for the same key.
#  - One client (psql) per partition takes its stream BATCH messages at a
#    time and runs one prepared statement per batch (autocommit, so one
#    transaction): idem_claim_batch over the batch's payment ids, and one
#    set-based INSERT of the fresh ones into payments (not unique: a payment
#    applied twice shows as two rows).  The statement returns an "ack" row
#    with the batch's outcomes, which psql prints once it has committed.
#  - The broker reads the acks; at a crash it takes its view of them, lets
#    the clients run on for a moment (acks from then on are lost) and crashes
#    the server; every partition is then redelivered from the message after
#    its last acknowledged batch, cut into batches anew.
#  - Crash 1: SIGKILL of one consumer's backend (the postmaster resets every
#    backend).  Crash 2: an immediate shutdown.  Then the rest, then a replay
#    of every partition from its first message: all duplicates.
#  - The library is preloaded, so the replay also checks that idem_stat
#    counts one call per element.

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
my $NPAY  = 3000;    # distinct payments
my $NACCT = 25;      # accounts
my $BATCH = 40;      # messages per batch

my %generated = PaymentStream::generate(
	partitions => $NPART,
	payments   => $NPAY,
	accounts   => $NACCT,
	seed       => 0x5EED0040);
my ($pay, $stream, $len) = @generated{qw(pay stream len)};

cmp_ok(PaymentStream::check_streams(\%generated, $NPAY),
	'>', $NPAY / 20, 'many payments are on two partitions (batches race on them)');
{
	my $inside = 0;
	for my $p (0 .. $NPART - 1)
	{
		for (my $from = 1; $from <= $len->[$p]; $from += $BATCH)
		{
			my %seen;
			my $to = $from + $BATCH - 1;
			$to = $len->[$p] if $to > $len->[$p];
			$inside += grep { $seen{$_}++ } @{ $stream->[$p] }[ $from - 1 .. $to - 1 ];
		}
	}
	cmp_ok($inside, '>', $NPAY / 50, "$inside payments are repeated inside one batch");
}

my $node = PostgreSQL::Test::Cluster->new('batch');
$node->init;
$node->append_conf(
	'postgresql.conf', qq(
shared_preload_libraries = 'idempotent'
idempotent.purge_interval = 0
restart_after_crash = on
log_statement = none
max_connections = 30
deadlock_timeout = 100ms
));
$node->start;
PaymentStream::create_schema($node, $NACCT);

my $tempdir = PostgreSQL::Test::Utils::tempdir;

# The consumer's statement: claim the batch, insert the fresh payments.
# $4 is "epoch:partition", so that a payments row says which delivery
# applied it; $5 .. $7 are the partition and the batch's first and last seq.
my $prepare = q{
PREPARE consume(text[], int[], bigint[], text, int, int, int) AS
WITH claimed AS (SELECT ord, status, applied FROM idem_claim_batch($1)),
ins AS (
    INSERT INTO payments (payment_id, account, amount, delivery)
    SELECT m.id, m.account, m.amount, $4 || ':' || ($6 + m.ord - 1)
    FROM unnest($1, $2, $3) WITH ORDINALITY AS m(id, account, amount, ord)
    JOIN claimed c ON c.ord = m.ord AND c.applied
    RETURNING 1)
SELECT 'ack', $5, $6, $7, (SELECT count(*) FROM ins),
       (SELECT string_agg(left(status, 1), '' ORDER BY ord) FROM claimed);
};

my @acked = map { 0 } 1 .. $NPART;    # broker: last acknowledged seq per partition
my @printed;       # every ack: [epoch, p, from, to, napplied, statuses]
my @epoch_from;    # epoch => [first seq delivered per partition]

# One psql per partition delivering its stream from $from[p] to the end, in
# batches of $BATCH, with a pg_sleep of $think seconds between batches; its
# acks are per batch (PaymentStream::read_acks).
sub start_clients
{
	my ($epoch, $from, $think) = @_;
	my (@clients, $todo);
	for my $p (0 .. $NPART - 1)
	{
		next if $from->[$p] > $len->[$p];
		my $file = "$tempdir/e${epoch}_p$p";
		open my $fh, '>', "$file.sql" or die "could not write $file.sql: $!";
		print $fh $prepare;
		for (my $f = $from->[$p]; $f <= $len->[$p]; $f += $BATCH)
		{
			my $t = $f + $BATCH - 1;
			$t = $len->[$p] if $t > $len->[$p];
			my @ids = @{ $stream->[$p] }[ $f - 1 .. $t - 1 ];
			print $fh "DO \$\$BEGIN PERFORM pg_sleep($think); END\$\$;\n" if $think;
			printf $fh "EXECUTE consume('{%s}', '{%s}', '{%s}', '%d:%d', %d, %d, %d);\n",
			  join(',', @ids),
			  join(',', map { $pay->{$_}[0] } @ids),
			  join(',', map { $pay->{$_}[1] } @ids),
			  $epoch, $p, $p, $f, $t;
		}
		close $fh;
		push @clients, PaymentStream::start_psql($node, $file, p => $p, from => $from->[$p],
			to => $len->[$p], batch => 1);
		$todo += $len->[$p] - $from->[$p] + 1;
	}
	return (\@clients, $todo);
}

sub messages_acked
{
	my ($clients, $epoch) = @_;
	my $n = 0;
	for my $c (@$clients)
	{
		$n += $_->[3] - $_->[2] + 1 for PaymentStream::read_acks($c, $epoch);
	}
	return $n;
}

# Deliver every partition from after its last acknowledged message; with
# $opt{crash}, crash once the acks reach $opt{fraction} of the messages.
sub run_epoch
{
	my ($epoch, %opt) = @_;
	my @from = map { $opt{replay_from} // ($acked[$_] + 1) } 0 .. $NPART - 1;
	$epoch_from[$epoch] = [@from];
	my ($clients, $todo) = start_clients($epoch, \@from, $opt{think});
	note "epoch $epoch ($opt{kind}): delivering $todo messages, from @from";

	my @broker_view;
	if ($opt{crash})
	{
		my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
		usleep(5_000)
		  while messages_acked($clients, $epoch) < $todo * $opt{fraction} && time < $deadline;
		@broker_view = map { PaymentStream::read_acks($_, $epoch) } @$clients;
		usleep(30_000);
		$opt{crash}->();
	}

	for my $c (@$clients)
	{
		my $what = "epoch $epoch, partition $c->{p}";
		my @acks = PaymentStream::finish_client($c, $epoch, $what);
		push @printed, @acks;
		my $next = @acks ? $acks[-1][3] + 1 : $c->{from};    # the first message not acknowledged
		if ($opt{crash})
		{
			isnt($c->{exit}, 0, "$what: the crash cut the client off mid-stream");
			cmp_ok($next, '<=', $c->{to}, "$what: not every message was acknowledged");
			unlike($c->{stderr}, qr/\bERROR:/, "$what: no SQL error before the crash")
			  or diag($c->{stderr});
		}
		else
		{
			is($c->{exit}, 0, "$what: client ran to the end") or diag("stderr: $c->{stderr}");
			is($next, $c->{to} + 1, "$what: every message acknowledged");
			is($c->{stderr}, '', "$what: no errors (no deadlock between batches)");
		}
	}

	my @view = $opt{crash} ? @broker_view : map { @{ $_->{acks} } } @$clients;
	unless (defined $opt{replay_from})
	{
		for my $a (sort { $a->[2] <=> $b->[2] } @view)
		{
			die "ack out of order" unless $a->[2] == $acked[ $a->[1] ] + 1;
			$acked[ $a->[1] ] = $a->[3];
		}
	}
	return;
}

# Crash 1: SIGKILL the backend of the last consumer; the postmaster resets all.
sub crash_backend
{
	PaymentStream::kill_consumer_backend($node, 1);
	return;
}

# Crash 2: an immediate shutdown (no checkpoint; recovery from WAL at start).
sub crash_immediate
{
	$node->stop('immediate');
	return;
}

{
	my $offset = -s $node->logfile;
	run_epoch(1, kind => 'backend kill', crash => \&crash_backend, fraction => 0.3,
		think => 0.02);
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset);
	$node->poll_query_until('postgres', 'SELECT true')
	  or die 'the server did not come back after crash 1';
	like(slurp_file($node->logfile, $offset), qr/server process \(PID \d+\) was terminated by signal 9/,
		'crash 1: the postmaster saw its backend killed');
}
run_epoch(2, kind => 'immediate shutdown', crash => \&crash_immediate, fraction => 0.4,
	think => 0.02);
{
	my $offset = -s $node->logfile;
	$node->start;
	like(slurp_file($node->logfile, $offset),
		qr/database system was interrupted|automatic recovery in progress/,
		'crash 2: the server recovered from WAL');
}
run_epoch(3, kind => 'clean', think => 0);
is_deeply(\@acked, $len, 'every message of every partition was acknowledged');

###########################################################################
# The effects: every payment exactly once.

my $effects_query = q{
SELECT (SELECT string_agg(payment_id || '=' || n, ',' ORDER BY payment_id)
          FROM (SELECT payment_id, count(*) AS n FROM payments GROUP BY payment_id) s),
       (SELECT string_agg(account || '=' || total, ',' ORDER BY account)
          FROM (SELECT account, sum(amount) AS total FROM payments GROUP BY account) s),
       (SELECT string_agg(key, ',' ORDER BY key) FROM idem_ledger)};
my $effects = $node->safe_psql('postgres', $effects_query);

my %count = map { split /=/ } split /,/,
  $node->safe_psql('postgres',
	q{SELECT string_agg(payment_id || '=' || n, ',') FROM
	  (SELECT payment_id, count(*) AS n FROM payments GROUP BY payment_id) s});
my @twice = grep { $count{$_} != 1 } sort keys %count;
is(scalar(@twice), 0, 'no payment was applied more than once')
  or diag('applied more than once: ' . PaymentStream::show(@twice));
is_deeply([ sort keys %count ], [ sort keys %$pay ],
	'the payments applied are exactly the distinct payments of the streams');

my %sum = map { split /=/ } split /,/,
  $node->safe_psql('postgres',
	q{SELECT string_agg(account || '=' || total, ',') FROM
	  (SELECT account, sum(amount) AS total FROM payments GROUP BY account) s});
$sum{$_} //= 0 for keys %{ $generated{balance} };
is_deeply(\%sum, $generated{balance}, 'each account\'s payments sum to its distinct payments');

my %delivery_of = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', q{SELECT payment_id, delivery FROM payments});
{
	my @bad;
	for my $id (sort keys %delivery_of)
	{
		my ($e, $p, $seq) = split /:/, $delivery_of{$id};
		push @bad, "$id:$delivery_of{$id}"
		  unless defined $seq && $e >= 1 && $e <= 3 && ($stream->[$p][ $seq - 1 ] // '') eq $id;
	}
	is(scalar(@bad), 0, 'every payment was applied by a delivery of that payment')
	  or diag(PaymentStream::show(@bad));
}
is( $node->safe_psql('postgres',
		q{SELECT count(*) || ' ' || count(*) FILTER (WHERE policy = 'o' AND version IS NULL
		                                          AND rows IS NULL AND result IS NULL)
		  FROM idem_ledger}),
	scalar(keys %$pay) . ' ' . scalar(keys %$pay),
	'the ledger has one claimed once key per distinct payment');

###########################################################################
# The outcomes the clients saw.

{
	my (%applied_by, @bad, %statuses);
	for my $a (@printed)
	{
		my ($e, $p, $from, $to, $napplied, $st) = @$a;
		push @bad, join(':', @$a) unless length($st) == $to - $from + 1;
		push @bad, join(':', @$a) unless ($st =~ tr/a//) == $napplied;
		$statuses{$_}++ for split //, $st;
		for my $i (0 .. length($st) - 1)
		{
			push @{ $applied_by{ $stream->[$p][ $from - 1 + $i ] } }, "$e:$p:" . ($from + $i)
			  if substr($st, $i, 1) eq 'a';
		}
	}
	note 'outcomes acknowledged: ' . join(', ', map { "$_ $statuses{$_}" } sort keys %statuses);
	is(scalar(@bad), 0, 'each ack has one outcome per message, and as many inserts as applied')
	  or diag(PaymentStream::show(@bad));
	is(join('', sort keys %statuses), 'ad', 'every outcome is applied or duplicate');
	my @several = grep { @{ $applied_by{$_} } > 1 } sort keys %applied_by;
	is(scalar(@several), 0, 'no payment was reported applied twice') or diag("@several");
	my @mismatch = grep { $applied_by{$_}[0] ne $delivery_of{$_} } sort keys %applied_by;
	is(scalar(@mismatch), 0,
		'an applied outcome is reported by the delivery whose row is in payments')
	  or diag("@mismatch");
}

# Messages committed before a crash but not acknowledged came back as duplicates.
for my $e (1, 2)
{
	my ($redelivered, @wrong) = (0);
	for my $a (grep { $_->[0] == $e + 1 } @printed)
	{
		my ($ae, $p, $from, $to, $napplied, $st) = @$a;
		for my $seq ($from .. $to)
		{
			my $id = $stream->[$p][ $seq - 1 ];
			next unless ($delivery_of{$id} // '') eq "$e:$p:$seq";
			$redelivered++;
			push @wrong, "$p:$seq" unless substr($st, $seq - $from, 1) eq 'd';
		}
	}
	note "crash $e: $redelivered messages committed before it were redelivered";
	cmp_ok($redelivered, '>', 0,
		"crash $e: messages committed but not acknowledged before it were redelivered");
	is(scalar(@wrong), 0, "crash $e: each of them came back as a duplicate") or diag("@wrong");
}

###########################################################################
# A consumer group reset: every partition replayed from its first message.
# idem_stat counts one call per element of the batches.

$node->safe_psql('postgres', 'SELECT idem_stats_reset()');
{
	my $n_before = scalar @printed;
	run_epoch(4, kind => 'replay', replay_from => 1, think => 0);
	my @replay = @printed[ $n_before .. $#printed ];
	my $messages = 0;
	$messages += $_->[3] - $_->[2] + 1 for @replay;
	is($messages, $generated{nmsg}, 'the replay acknowledged every message');
	is(scalar(grep { $_->[4] != 0 || $_->[5] =~ /[^d]/ } @replay),
		0, 'every replayed message is a duplicate');
}
is($node->safe_psql('postgres', $effects_query),
	$effects, 'the replay changed no payment and no ledger row');
is( $node->safe_psql('postgres',
		q{SELECT calls || '/' || duplicate || '/' || applied || '/' || errors FROM idem_stat
		  WHERE policy = 'once'}),
	"$generated{nmsg}/$generated{nmsg}/0/0", 'idem_stat counted each element of the replayed batches as a call');

# A batch that fails (a key of another policy) is one error; bad input is none.
$node->safe_psql('postgres', 'SELECT idem_stats_reset()');
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT * FROM idem_claim_batch(ARRAY['st:new', 'pay-00001'], ARRAY[1, 1])});
like($err, qr/recorded under policy "once", not "newer"/, 'a batch with a key of another policy fails');
$node->psql('postgres', q{SELECT * FROM idem_claim_batch(ARRAY['st:new', NULL])});
$node->safe_psql('postgres',
	q{SELECT * FROM idem_claim_batch(ARRAY['st:1', 'st:2', 'st:1', 'pay-00001'])});
is( $node->safe_psql('postgres', q{
SELECT string_agg(format('%s:%s/%s/%s/%s', policy, calls, applied, duplicate, errors), ' '
                  ORDER BY policy)
FROM idem_stat WHERE calls > 0}),
	'newer:1/0/0/1 once:4/2/2/0',
	'idem_stat: one call per element, one error per failed batch, nothing for bad input');

PaymentStream::check_ledger_index($node);

$node->stop;
note sprintf('runtime %.1f s', time - $started_at);
done_testing();
