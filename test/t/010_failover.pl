
# 010_failover.pl
#
# Failover to a streaming-replication standby under an at-least-once message
# stream.  The promise under test: the ledger row and the effect of a message
# commit together, so what survives a failover is exactly what committed on
# the standby, and redelivery on the promoted standby applies every message
# exactly once.  Which acknowledged messages survive is up to replication:
#
#  A. synchronous standby (synchronous_standby_names names it,
#     synchronous_commit = on, i.e. remote_flush): a commit returns, and the
#     consumer acknowledges, only once the standby has flushed its WAL.  No
#     acknowledged message may be lost.  To show that remote_flush is enough
#     (remote_apply is not needed for failover), WAL replay on the standby is
#     paused part-way: the messages acknowledged from then on are flushed on
#     the standby but not applied when the primary dies.  Promotion replays
#     every flushed record before it opens for writes, so they must survive.
#     (remote_apply matters only to consumers that read the standby before a
#     failover, for example to look for duplicates there.)
#
#  B. asynchronous standby (no synchronous_standby_names): a commit returns
#     before the standby has the WAL, so a failover loses the commits the
#     standby had not received.  Their messages were acknowledged; the ones
#     whose ack reached the broker are not redelivered and stay lost (their
#     effect is lost, never doubled), the others are redelivered and applied
#     again (correctly: their first effect was lost with them).  Measured
#     twice:
#       B1. as it comes: on this loopback the standby is rarely behind.
#       B2. with the replication link stalled for the last part of the run:
#           the primary's walsender is stopped with SIGSTOP, so the primary
#           goes on committing and acknowledging while nothing reaches the
#           standby, as happens with a slow or congested link or a standby
#           busy with I/O.  WAL the standby received is kept (and replayed at
#           promotion); WAL it never received is lost.  Pausing replay or
#           recovery_min_apply_delay would not show any loss: received WAL is
#           replayed at promotion whatever the delay (part A checks exactly
#           that).
#     Then the remedy: rewinding the consumers to an offset from before the
#     failover and replaying.  Every surviving message comes back as a
#     duplicate and every lost one is applied once.
#
# Each run: a primary and its standby; one psql client per partition consumes
# its stream from the primary, one message per autocommit transaction, and
# prints an ack only after the commit returned.  The primary is killed
# (every process stopped, then SIGKILL) mid-run, the standby promoted, every
# partition redelivered to it from the message after its last acknowledged
# one, and finally replayed from its first message.  All PostgreSQL clusters
# run with fsync = off (PostgreSQL::Test::Cluster's default): the primary's
# processes die, not the machine, and the kernel keeps what was written.

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
my $NPAY  = 1500;    # distinct payments
my $NACCT = 25;      # accounts (shared by all partitions)

###########################################################################
# The message streams, from a fixed seed (xorshift32: same on every perl).
# The same streams are used by every run.

my %generated = PaymentStream::generate(
	partitions => $NPART,
	payments   => $NPAY,
	accounts   => $NACCT,
	seed       => 0x1D872B41);
my %pay              = %{ $generated{pay} };
my @stream           = @{ $generated{stream} };
my @len              = @{ $generated{len} };
my %expected_balance = %{ $generated{balance} };
PaymentStream::check_streams(\%generated, $NPAY);

my $tempdir = PostgreSQL::Test::Utils::tempdir;

###########################################################################
# Helpers.

# Deliver partitions from @$from to their ends on $node; wait for the clients.
# With $events (a list of [fraction of the acks, code]), run each code once
# the acks reach its fraction; the last one kills the server.
sub run_epoch
{
	my ($R, $node, $epoch, $from, %opt) = @_;
	my ($clients, $todo) = PaymentStream::start_clients(
		node    => $node,
		streams => \%generated,
		epoch   => $epoch,
		from    => $from,
		files   => "$tempdir/$R->{tag}_",
		think   => $opt{think});
	my @clients = @$clients;
	note "$R->{tag} epoch $epoch: delivering $todo messages to "
	  . $node->name
	  . ", from @$from";

	for my $ev (@{ $opt{events} // [] })
	{
		my ($fraction, $code) = @$ev;
		PaymentStream::wait_acks(\@clients, $epoch, int($todo * $fraction));
		$code->(\@clients);
	}

	my $crashed = defined $opt{events};
	my @all;
	for my $c (@clients)
	{
		my $what = "$R->{tag} epoch $epoch, partition $c->{p}";
		my @acks = PaymentStream::finish_client($c, $epoch, $what);
		push @all, @acks;
		if ($crashed)
		{
			ok( $c->{exit} != 0 && @acks < $c->{to} - $c->{from} + 1,
				"$what: the failure cut the client off mid-stream");
			like($c->{stderr},
				qr/server closed the connection unexpectedly|connection to server was lost|terminating connection/,
				"$what: the client lost its connection");
			unlike($c->{stderr}, qr/\bERROR:/, "$what: no SQL error before the failure");
		}
		else
		{
			ok( $c->{exit} == 0 && @acks == $c->{to} - $c->{from} + 1
				  && $c->{stderr} eq '',
				"$what: every message acknowledged, no error")
			  or diag("exit $c->{exit}, stderr: $c->{stderr}");
		}
	}
	return { clients => \@clients, acks => \@all };
}

# The effects on $node: payment_id => [rows...] of delivery, ledger keys,
# balances.
sub effects
{
	my ($node) = @_;
	my %payments;
	for my $row (split /\n/,
		$node->safe_psql('postgres', 'SELECT payment_id, delivery FROM payments'))
	{
		my ($id, $delivery) = split /\|/, $row;
		push @{ $payments{$id} }, $delivery;
	}
	my %ledger = map { $_ => 1 } split /\n/,
	  $node->safe_psql('postgres', 'SELECT key FROM idem_ledger');
	my %balance = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', 'SELECT id, balance FROM accounts');
	return { payments => \%payments, ledger => \%ledger, balance => \%balance };
}

# Exactly once with respect to the payments present: one row each, the
# ledger holds exactly their keys, each balance is the sum of its payments,
# each row was written by a delivery of that very payment.
sub check_consistent
{
	my ($E, $what) = @_;
	my @twice = grep { @{ $E->{payments}{$_} } != 1 } sort keys %{ $E->{payments} };
	is(scalar(@twice), 0, "$what: no payment applied more than once")
	  or diag(PaymentStream::show(@twice));
	is_deeply([ sort keys %{ $E->{ledger} } ], [ sort keys %{ $E->{payments} } ],
		"$what: the ledger holds exactly the keys of the payments applied");
	my %sum = map { $_ => 0 } 1 .. $NACCT;
	$sum{ $pay{$_}[0] } += $pay{$_}[1] for keys %{ $E->{payments} };
	is_deeply($E->{balance}, \%sum,
		"$what: each balance is the sum of the payments applied to it");
	my @bad;
	for my $id (keys %{ $E->{payments} })
	{
		my ($e, $p, $seq) = split /:/, $E->{payments}{$id}[0];
		push @bad, "$id\@$E->{payments}{$id}[0]"
		  unless defined $seq && ($stream[$p][ $seq - 1 ] // '') eq $id;
	}
	is(scalar(@bad), 0, "$what: every payment was applied by a delivery of it")
	  or diag(PaymentStream::show(@bad));
	return;
}

###########################################################################
# One failover run.
#
#   tag          node name prefix
#   sync         synchronous standby (else asynchronous)
#   pause_at     fraction of the acks at which replay is paused on the standby
#   stall_at     fraction of the acks at which the walsender is stopped
#   kill_at      fraction of the acks at which the broker takes its view; the
#                primary is killed 30 ms later

my @table;
my @stopped;    # walsenders stopped with SIGSTOP: let them go if we die early
END { kill 'CONT', @stopped if @stopped; }

sub run_failover
{
	my (%m) = @_;
	my $tag = $m{tag};
	my $R = { tag => $tag };

	my $primary = PostgreSQL::Test::Cluster->new("${tag}_primary");
	$primary->init(allows_streaming => 1);
	$primary->append_conf(
		'postgresql.conf', qq(
max_connections = 30
shared_buffers = 16MB
log_statement = none
));
	$primary->start;
	PaymentStream::create_schema($primary, $NACCT);
	$primary->backup('base');
	my $standby = PostgreSQL::Test::Cluster->new("${tag}_standby");
	$standby->init_from_backup($primary, 'base', has_streaming => 1);
	$standby->start;
	$primary->wait_for_catchup($standby);
	my $sname = $standby->name;
	if ($m{sync})
	{
		# set after the backup, so the standby does not inherit it
		$primary->append_conf(
			'postgresql.conf', qq(
synchronous_standby_names = '"$sname"'
synchronous_commit = on
));
		$primary->reload;
	}
	my $want = $m{sync} ? 'sync' : 'async';
	$primary->poll_query_until('postgres',
		"SELECT sync_state = '$want' FROM pg_stat_replication WHERE application_name = '$sname'")
	  or die "the standby did not become $want";
	pass("$tag: the standby streams from the primary as a $want standby");
	if ($m{sync})
	{
		# A standby answers duplicates but cannot record a key (25006).  The
		# probe key is forgotten again: the ledger must hold payments only.
		$primary->safe_psql('postgres', q{SELECT idem_claim('standby:probe')});
		$primary->wait_for_catchup($standby, 'replay');
		is($standby->safe_psql('postgres', q{SELECT status FROM idem_claim('standby:probe')}),
			'duplicate', "$tag: a standby answers a duplicate");
		my ($rc, $out, $err) = $standby->psql('postgres',
			q{SELECT status FROM idem_claim('standby:new')},
			extra_params => [ '-v', 'VERBOSITY=verbose' ]);
		like($err, qr/ERROR:  25006: cannot record key "standby:new"/,
			"$tag: and refuses to record a new key with 25006");
		$primary->safe_psql('postgres', q{SELECT idem_forget('standby:probe')});
	}
	my $walsender = $primary->safe_psql('postgres',
		"SELECT pid FROM pg_stat_replication WHERE application_name = '$sname'");

	# Epoch 1: the stream on the primary, until the primary dies.
	my (@events, $paused_at_acks, $stall_time, $lag);
	my @acked = (0) x $NPART;    # broker: last acknowledged seq per partition
	my @view;                    # broker's view of the acks
	if (defined $m{pause_at})
	{
		push @events, [
			$m{pause_at},
			sub {
				$standby->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
				$standby->poll_query_until('postgres',
					"SELECT pg_get_wal_replay_pause_state() = 'paused'")
				  or die 'replay did not pause';
				$paused_at_acks = PaymentStream::count_acks($_[0], 1);
				note "$tag: WAL replay paused on the standby after $paused_at_acks acks";
			}
		];
	}
	if (defined $m{stall_at})
	{
		push @events, [
			$m{stall_at},
			sub {
				push @stopped, $walsender;
				kill('STOP', $walsender) or die "could not stop walsender $walsender: $!";
				$stall_time = time;
				note "$tag: walsender $walsender stopped after "
				  . PaymentStream::count_acks($_[0], 1) . ' acks';
			}
		];
	}
	push @events, [
		$m{kill_at},
		sub {
			my ($clients) = @_;
			# How far behind the standby is, as the primary last heard from
			# it (the standby reports after every flush; a stopped walsender
			# no longer hears, so there it is the state at the stall).
			$lag = $primary->safe_psql('postgres',
				"SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), flush_lsn) || '|' || "
				  . "pg_wal_lsn_diff(flush_lsn, replay_lsn) "
				  . "FROM pg_stat_replication WHERE application_name = '$sname'");
			# The broker's view: acks it has received.  Those printed from
			# now until the failure never reach it.
			@view = map { PaymentStream::read_acks($_, 1) } @$clients;
			usleep(30_000);
			$R->{stall_ms} = int(1000 * (time - $stall_time)) if defined $stall_time;
			PaymentStream::kill_server($primary);
			@stopped = ();
		}
	];
	my $e1 = run_epoch($R, $primary, 1, [ (1) x $NPART ], think => 0.002,
		events => \@events);
	my ($not_received, $not_replayed) = split /\|/, $lag;
	note "$tag: just before the kill the standby was $not_received bytes of "
	  . "WAL behind the primary, and had flushed but not replayed $not_replayed bytes";
	PaymentStream::move_offsets(\@acked, @view);
	my @last_printed = map { 0 } 1 .. $NPART;
	$last_printed[ $_->[1] ] = $_->[2] for @{ $e1->{acks} };

	# Failover.
	$standby->promote;
	$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
	  or die 'the standby was not promoted';
	pass("$tag: the standby was promoted");

	# What survived.
	my $S = effects($standby);
	check_consistent($S, "$tag after promotion");
	my (@lost_acks, %lost_ids, $lost_seen);
	for my $a (@{ $e1->{acks} })
	{
		my (undef, $p, $seq) = @$a;
		my $id = $stream[$p][ $seq - 1 ];
		next if $S->{payments}{$id};
		push @lost_acks, "$p:$seq";
		$lost_ids{$id} = 1;
		$lost_seen++ if $seq <= $acked[$p];
	}
	$lost_seen //= 0;
	note "$tag: " . scalar(@{ $e1->{acks} }) . ' acks printed before the failure, '
	  . scalar(@view) . ' seen by the broker; '
	  . scalar(@lost_acks) . " acknowledged messages lost ($lost_seen seen by the broker)";
	if ($m{sync})
	{
		is(scalar(@lost_acks), 0,
			"$tag: every acknowledged message's effect is on the promoted standby")
		  or diag('lost: ' . PaymentStream::show(@lost_acks));
		if (defined $paused_at_acks)
		{
			cmp_ok($not_replayed, '>', 0,
				"$tag: at the failure the standby held WAL it had received but not replayed");
			cmp_ok(scalar(@{ $e1->{acks} }), '>', $paused_at_acks,
				"$tag: messages were acknowledged while the standby's replay was paused");
		}
	}
	if ($m{expect_loss})
	{
		cmp_ok(scalar(@lost_acks), '>', 0,
			"$tag: acknowledged messages were lost with the WAL the standby never received");
	}
	# an applied outcome the client saw is the very delivery whose effect is there
	{
		my @wrong = grep {
			my ($e, $p, $seq, $status) = @$_;
			my $d = $S->{payments}{ $stream[$p][ $seq - 1 ] };
			$status eq 'applied' && $d && $d->[0] ne "1:$p:$seq"
		} @{ $e1->{acks} };
		is(scalar(@wrong), 0,
			"$tag: a surviving applied ack is the delivery whose effect survived");
	}

	# Epoch 2: redelivery to the promoted standby from each partition's last ack.
	my @from2 = map { $acked[$_] + 1 } 0 .. $NPART - 1;
	my $e2 = run_epoch($R, $standby, 2, \@from2);
	my $F = effects($standby);
	check_consistent($F, "$tag after redelivery");

	# Classify the redeliveries of messages the failed epoch may have
	# delivered (acked but unseen, and the one in flight per client).
	my ($redup, $reapp) = (0, 0);
	my (@dup_wrong, @lost_wrong);
	my %applied_in_e2;
	for my $a (@{ $e2->{acks} })
	{
		my (undef, $p, $seq, $status) = @$a;
		my $id = $stream[$p][ $seq - 1 ];
		push @{ $applied_in_e2{$id} }, "2:$p:$seq" if $status eq 'applied';
		# survived the failover: must be a duplicate
		push @dup_wrong, "$p:$seq:$status" if $S->{payments}{$id} && $status ne 'duplicate';
		next if $seq > $last_printed[$p] + 1;
		$status eq 'duplicate' ? $redup++ : $reapp++;
	}
	is(scalar(@dup_wrong), 0,
		"$tag: every redelivered message whose effect survived came back as a duplicate")
	  or diag(PaymentStream::show(@dup_wrong));
	for my $id (sort keys %{ $F->{payments} })
	{
		next if $S->{payments}{$id};
		# not there after the failover: applied once, by the delivery that said so
		my $a = $applied_in_e2{$id} // [];
		push @lost_wrong, $id
		  unless @$a == 1 && $a->[0] eq $F->{payments}{$id}[0];
	}
	is(scalar(@lost_wrong), 0,
		"$tag: each payment missing after the failover was applied once by the redelivery that reported it")
	  or diag(PaymentStream::show(@lost_wrong));
	is(scalar(grep { !$F->{payments}{$_} } keys %applied_in_e2), 0,
		"$tag: every applied redelivery left its effect");
	{
		my @moved = grep { !$F->{payments}{$_} || $F->{payments}{$_}[0] ne $S->{payments}{$_}[0] }
		  keys %{ $S->{payments} };
		is(scalar(@moved), 0, "$tag: no surviving payment was applied again")
		  or diag(PaymentStream::show(@moved));
	}
	my @gone = grep { !$F->{payments}{$_} } sort keys %pay;
	if ($m{sync})
	{
		is(scalar(@gone), 0, "$tag: after redelivery every payment is applied")
		  or diag(PaymentStream::show(@gone));
		is_deeply($F->{balance}, \%expected_balance,
			"$tag: each balance is the sum of its distinct payments");
	}
	else
	{
		# the ones still missing: acknowledged to the broker, then lost
		my @unacked = grep { !$lost_ids{$_} } @gone;
		is(scalar(@unacked), 0,
			"$tag: every payment still missing after redelivery was acknowledged, then lost")
		  or diag(PaymentStream::show(@unacked));
	}

	# Epoch 3: the consumer group rewound to the start of the stream.
	my $e3 = run_epoch($R, $standby, 3, [ (1) x $NPART ]);
	my $G = effects($standby);
	check_consistent($G, "$tag after the rewind");
	is_deeply([ sort keys %{ $G->{payments} } ], [ sort keys %pay ],
		"$tag: after the rewind every payment is applied");
	is_deeply($G->{balance}, \%expected_balance,
		"$tag: after the rewind each balance is the sum of its distinct payments");
	{
		my %gone = map { $_ => 1 } @gone;
		my (%app, @wrong);
		for my $a (@{ $e3->{acks} })
		{
			my (undef, $p, $seq, $status) = @$a;
			my $id = $stream[$p][ $seq - 1 ];
			$app{$id}++ if $status eq 'applied';
			push @wrong, "$p:$seq:$status" unless $status =~ /^(applied|duplicate)$/;
		}
		is(scalar(@wrong), 0, "$tag: every replayed message is applied or a duplicate")
		  or diag(PaymentStream::show(@wrong));
		my @bad = (
			(grep { !$gone{$_} } sort keys %app),
			(grep { ($app{$_} // 0) != 1 } sort keys %gone));
		is(scalar(@bad), 0,
			"$tag: the rewind applied exactly the payments still missing, each once")
		  or diag(PaymentStream::show(@bad));
		my @moved = grep { $G->{payments}{$_}[0] ne $F->{payments}{$_}[0] }
		  keys %{ $F->{payments} };
		is(scalar(@moved), 0, "$tag: the rewind applied no payment again");
		$R->{rewind_applied} = scalar(keys %app);
	}

	$standby->stop;
	$primary->clean_node;

	push @table,
	  [
		$tag, $want, scalar(@{ $e1->{acks} }), scalar(@lost_acks), $lost_seen,
		$redup, $reapp, scalar(@gone), $R->{rewind_applied},
		$not_received, $R->{stall_ms} // '-'
	  ];
	return;
}

###########################################################################
# The runs.

run_failover(tag => 'sync', sync => 1, pause_at => 0.15, kill_at => 0.40);
run_failover(tag => 'async', sync => 0, kill_at => 0.40);
run_failover(tag => 'async_stall', sync => 0, stall_at => 0.32, kill_at => 0.40,
	expect_loss => 1);

diag('failover.  acked: messages acknowledged before the primary died.  lost: of those, the');
diag('ones whose effect is not on the promoted standby; broker saw: of those, the ones whose ack');
diag('reached the broker (not redelivered).  redel.: messages after the last ack the broker saw');
diag('that the dead primary may have committed, redelivered.  lost after: distinct payments still');
diag('missing after the redelivery.  rewind: applied by the replay from the start.  behind: WAL');
diag('bytes the standby lacked just before the kill.  stall: how long the link was stopped.');
my @head = ('run', 'mode', 'acked', 'lost', 'broker saw', 'redel. dup', 'redel. applied',
	'lost after', 'rewind', 'behind (B)', 'stall (ms)');
my $fmt = '%-12s %-5s' . (' %10s' x 9);
diag(sprintf($fmt, @head));
diag(sprintf($fmt, @$_)) for @table;

note sprintf('runtime %.1f s', time - $started_at);
done_testing();
