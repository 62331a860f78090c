
# PaymentStream.pm
#
# Deterministic streams of payment messages for the TAP tests that kill
# servers and consumers mid-stream: each partition's stream delivers every
# payment of that partition once, some again right after (a redelivery after
# a lost ack), some again much later (after a rebalance), and some payments
# also on a second partition (a producer retry), so clients race on them.
#
# Also what those tests share around the streams: the fixed-seed generator
# (used by 020_pgq_consumer.pl too), the payments schema and the statement
# that applies a payment, the psql clients that consume a partition and print
# an ack per message (or per batch, in 040_batch_consumers.pl), the broker's
# offsets, and killing every process of a server at once.

package PaymentStream;

use strict;
use warnings;

use PostgreSQL::Test::Utils qw(slurp_file);
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep time);

# rng(seed): a fixed-seed generator (xorshift32: the same numbers on every
# perl); returns rnd(n), which draws a number in 0 .. n-1.
sub rng
{
	my ($rng) = @_;
	return sub {
		my ($n) = @_;
		$rng ^= ($rng << 13) & 0xffffffff;
		$rng ^= $rng >> 17;
		$rng ^= ($rng << 5) & 0xffffffff;
		$rng &= 0xffffffff;
		return $rng % $n;
	};
}

# generate(partitions => N, payments => N, accounts => N, seed => 32-bit):
# returns a hash with
#   pay      => { id => [account, amount] }
#   stream   => [ partition => [payment ids in delivery order] ]
#   len      => [ partition => number of deliveries ]
#   nmsg     => all deliveries
#   balance  => { account => sum of its distinct payments }
sub generate
{
	my (%arg) = @_;
	my ($npart, $npay, $nacct) = @arg{qw(partitions payments accounts)};
	my $rnd = rng($arg{seed});
	my %pay;
	my @stream  = map { [] } 1 .. $npart;
	my @pending = map { [] } 1 .. $npart;    # partition => [[position, id]]

	# deliver to a partition, then the later redeliveries that have come due
	my $deliver = sub {
		my ($p, $id) = @_;
		push @{ $stream[$p] }, $id;
		while (my @due = grep { $_->[0] <= @{ $stream[$p] } } @{ $pending[$p] })
		{
			$pending[$p] = [ grep { $_->[0] > @{ $stream[$p] } } @{ $pending[$p] } ];
			push @{ $stream[$p] }, map { $_->[1] } @due;
		}
	};

	for my $i (1 .. $npay)
	{
		my $id = sprintf('pay-%05d', $i);
		$pay{$id} = [ 1 + $rnd->($nacct), 1 + $rnd->(500) ];
		my $home = $rnd->($npart);
		$deliver->($home, $id);
		# the same message again right after (redelivery after a lost ack)
		$deliver->($home, $id) if $rnd->(100) < 10;
		# the same message again much later (redelivery after a rebalance)
		push @{ $pending[$home] }, [ scalar(@{ $stream[$home] }) + 20 + $rnd->(200), $id ]
		  if $rnd->(100) < 10;
		# a producer retry that landed the payment on another partition too
		if ($rnd->(100) < 12)
		{
			my $other = ($home + 1 + $rnd->($npart - 1)) % $npart;
			$deliver->($other, $id);
		}
	}
	for my $p (0 .. $npart - 1)
	{
		push @{ $stream[$p] }, map { $_->[1] } @{ $pending[$p] };
	}

	my @len = map { scalar @{ $stream[$_] } } 0 .. $npart - 1;
	my $nmsg = 0;
	$nmsg += $_ for @len;
	my %balance = map { $_ => 0 } 1 .. $nacct;
	$balance{ $pay{$_}[0] } += $pay{$_}[1] for keys %pay;

	return (
		pay     => \%pay,
		stream  => \@stream,
		len     => \@len,
		nmsg    => $nmsg,
		balance => \%balance);
}

# check_streams(\%generated, payments): notes the streams' shape and tests
# that every payment is in them and that they carry many duplicates; returns
# the number of payments on more than one partition.
sub check_streams
{
	my ($g, $npay) = @_;
	my %parts_of;
	for my $p (0 .. $#{ $g->{stream} })
	{
		$parts_of{$_}{$p} = 1 for @{ $g->{stream}[$p] };
	}
	my $cross = grep { keys %{ $parts_of{$_} } > 1 } keys %parts_of;
	my $dups  = $g->{nmsg} - scalar(keys %parts_of);
	note "streams: @{ $g->{len} } messages (total $g->{nmsg}), "
	  . scalar(keys %{ $g->{pay} })
	  . " distinct payments, $dups duplicate deliveries, "
	  . "$cross payments on more than one partition";
	is(scalar(keys %parts_of), $npay, 'every payment is in the streams');
	cmp_ok($dups, '>', $npay / 5, 'the streams carry many duplicates');
	return $cross;
}

# create_schema(node, accounts): the extension, accounts 1 .. N at balance 0,
# and the payments table the statement below inserts into.
sub create_schema
{
	my ($node, $nacct) = @_;
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
INSERT INTO accounts (id) SELECT g FROM generate_series(1, $nacct) g;
));
	return;
}

# One statement: record the payment and move the money.  The delivery address
# comes from a setting, not from the arguments, so that every delivery of a
# payment is the same request (same statement, same arguments).
my $statement =
    q{WITH p AS (INSERT INTO payments (payment_id, account, amount, delivery) }
  . q{VALUES ($1, $2, $3, current_setting('app.delivery')) RETURNING account, amount) }
  . q{UPDATE accounts a SET balance = a.balance + p.amount FROM p }
  . q{WHERE a.id = p.account RETURNING a.id AS account, a.balance AS balance};

# start_clients(node => , streams => \%generated, epoch => , from => [first
# seq per partition], files => path prefix, think => seconds): starts a psql
# client (application_name consumerP) for each partition with messages from
# its first seq on, which delivers them to the end of the stream, one per
# autocommit transaction (SET app.delivery to epoch:partition:seq, then
# idem_apply of the payment), after a pg_sleep of think seconds each;
# returns ([clients], number of messages they deliver).
sub start_clients
{
	my (%arg) = @_;
	my ($node, $g, $epoch) = @arg{qw(node streams epoch)};
	my $think = $arg{think};
	my @clients;
	my $todo = 0;
	for my $p (0 .. $#{ $g->{stream} })
	{
		my ($from, $to) = ($arg{from}[$p], $g->{len}[$p]);
		next if $from > $to;
		my $file = "$arg{files}e${epoch}_p$p";
		open my $fh, '>', "$file.sql" or die "could not write $file.sql: $!";
		for my $seq ($from .. $to)
		{
			my $id = $g->{stream}[$p][ $seq - 1 ];
			my ($acct, $amount) = @{ $g->{pay}{$id} };
			# the consumer's own work between two messages (keeps the clients
			# slow enough for a crash to land mid-stream)
			print $fh "DO \$\$BEGIN PERFORM pg_sleep($think); END\$\$;\n" if $think;
			print $fh "SET app.delivery = '$epoch:$p:$seq';\n";
			print $fh "SELECT 'ack', $p, $seq, o.status, o.applied, o.rows "
			  . "FROM idem_apply('$id', NULL, \$stmt\$$statement\$stmt\$, "
			  . "'$id'::text, $acct, $amount) AS o;\n";
		}
		close $fh;
		push @clients, start_psql($node, $file, p => $p, from => $from, to => $to);
		$todo += $to - $from + 1;
	}
	return (\@clients, $todo);
}

# start_psql(node, file, p => partition, from => first seq, to => last seq,
# batch => 1 if it acks batches): starts a psql (application_name consumerP)
# running file.sql into file.out and file.err, stopped after the default
# timeout; returns the client: { p, h (the IPC::Run harness), out, err, from,
# to, batch }.
sub start_psql
{
	my ($node, $file, %c) = @_;
	$c{h} = IPC::Run::start(
		[
			$node->installed_command('psql'), '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres') . " application_name=consumer$c{p}",
			'-f', "$file.sql"
		],
		'<', \undef, '>', "$file.out", '2>', "$file.err",
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	@c{qw(out err)} = ("$file.out", "$file.err");
	return \%c;
}

# The complete ack lines a client has printed so far, into the file $c->{out},
# each after its commit: per message, "ack|partition|seq|status|applied|rows",
# returned as [epoch, partition, seq, status, applied, rows]; or, from a
# batch client, per batch "ack|partition|first seq|last seq|applied|statuses"
# (the number applied, a letter per message), returned as [epoch, partition,
# first seq, last seq, applied, statuses].
sub read_acks
{
	my ($c, $epoch) = @_;
	my $format =
	  $c->{batch}
	  ? qr/^ack\|(\d+)\|(\d+)\|(\d+)\|(\d+)\|([a-z]+)$/
	  : qr/^ack\|(\d+)\|(\d+)\|(\w+)\|([tf])\|(\d*)$/;
	my $text = -e $c->{out} ? slurp_file($c->{out}) : '';
	$text =~ s/[^\n]*\z//;    # a line still being written is not an ack yet
	my @acks;
	for my $line (split /\n/, $text)
	{
		die "unexpected output from client $c->{p}: $line"
		  unless $line =~ $format;
		die "client $c->{p} printed an ack for partition $1" unless $1 == $c->{p};
		push @acks, [ $epoch, $1, $2, $3, $4, $5 ];
	}
	return @acks;
}

# count_acks([clients], epoch): how many acks the clients have printed so far.
sub count_acks
{
	my ($clients, $epoch) = @_;
	my $n = 0;
	$n += scalar(read_acks($_, $epoch)) for @$clients;
	return $n;
}

# wait_acks([clients], epoch, target): waits until the clients have printed
# target acks; dies if they have not within the default timeout.
sub wait_acks
{
	my ($clients, $epoch, $target) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	my $seen     = 0;
	while (time < $deadline)
	{
		$seen = count_acks($clients, $epoch);
		return $seen if $seen >= $target;
		usleep(5_000);
	}
	die "clients acknowledged only $seen of $target messages";
}

# finish_client(client, epoch, what): waits for the client's psql to end,
# keeps its exit status, stderr and acks in the client, and tests that the
# acks are in order from its first message (a batch client's: each batch
# right after the previous one); returns the acks.
sub finish_client
{
	my ($c, $epoch, $what) = @_;
	$c->{h}->finish;
	$c->{exit}   = $c->{h}->result(0);
	$c->{stderr} = slurp_file($c->{err});
	my @acks = read_acks($c, $epoch);
	$c->{acks} = \@acks;
	if ($c->{batch})
	{
		my $next = $c->{from};
		my $in_order = 1;
		for my $a (@acks)
		{
			$in_order = 0 unless $a->[2] == $next;
			$next = $a->[3] + 1;
		}
		ok($in_order, "$what: batches acknowledged in order from message $c->{from}");
		return @acks;
	}
	my @seqs = map { $_->[2] } @acks;
	is_deeply(\@seqs, [ $c->{from} .. $c->{from} + @seqs - 1 ],
		"$what: acks in order from message $c->{from}");
	return @acks;
}

# move_offsets([last acked seq per partition], acks): the broker moves each
# partition's offset past the acks it received, which must come in order.
sub move_offsets
{
	my ($acked, @acks) = @_;
	for my $a (@acks)
	{
		my (undef, $p, $seq) = @$a;
		die "ack out of order" unless $seq == $acked->[$p] + 1;
		$acked->[$p] = $seq;
	}
	return;
}

# kill_consumer_backend(node, last): SIGKILLs the backend of one consumer of
# start_clients or start_psql: the first by application_name, or the last if
# last is true. The postmaster then resets every backend.
sub kill_consumer_backend
{
	my ($node, $last) = @_;
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'consumer%' ORDER BY application_name "
		  . ($last ? 'DESC' : 'ASC') . ' LIMIT 1');
	die "no consumer has a backend" unless $pid =~ /^\d+$/;
	kill('KILL', $pid) or die "could not kill backend $pid: $!";
	note "killed backend $pid of a consumer with SIGKILL";
	return;
}

# check_ledger_index(node): tests with amcheck, where it is available, that
# the index of the ledger agrees with its heap (one test, or one skip).
sub check_ledger_index
{
	my ($node) = @_;
  SKIP:
	{
		skip 'amcheck is not available', 1
		  unless $node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'}) eq '1';
		$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');
		my ($ret, $out, $err) = $node->psql('postgres',
			q{SELECT bt_index_check('idem_ledger_pkey'::regclass, true)});
		is($ret, 0, 'amcheck: the ledger index is consistent with the heap') or diag($err);
	}
	return;
}

# The children of process ppid, from /proc.
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

# kill_server(node): stops every process of the node's server, then kills
# them all with SIGKILL, so that none gets to react to the others' deaths (a
# walsender cannot send one more record, a backend cannot commit one more
# transaction); returns once they are gone.
sub kill_server
{
	my ($node) = @_;
	my ($pm) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
	kill 'STOP', $pm;
	my @kids = children_of($pm);
	kill 'STOP', @kids;
	kill 'KILL', $pm, @kids;
	$node->kill9;    # the node forgets its postmaster (already dead)
	# Gone, and reaped: a new postmaster refuses to start while the pid in
	# postmaster.pid still answers kill 0, even as a zombie.
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	usleep(20_000) while (grep { kill(0, $_) } $pm, @kids) && time < $deadline;
	die "server processes survived SIGKILL" if grep { kill(0, $_) } $pm, @kids;
	note 'killed the postmaster ' . $node->name . " $pm and "
	  . scalar(@kids)
	  . ' children with SIGKILL';
	return;
}

# show(list): the first ten of a list, for a diagnostic.
sub show
{
	my (@l) = @_;
	return join(' ', @l[ 0 .. ($#l < 9 ? $#l : 9) ]) . (@l > 10 ? ' ...' : '');
}

1;
