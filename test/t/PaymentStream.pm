
# PaymentStream.pm
#
# Deterministic streams of payment messages for the TAP tests that kill
# servers and consumers mid-stream: each partition's stream delivers every
# payment of that partition once, some again right after (a redelivery after
# a lost ack), some again much later (after a rebalance), and some payments
# also on a second partition (a producer retry), so clients race on them.

package PaymentStream;

use strict;
use warnings;

use PostgreSQL::Test::Utils qw(slurp_file);

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
	my $rng = $arg{seed};

	# xorshift32: the same numbers on every perl
	my $rnd = sub {
		my ($n) = @_;
		$rng ^= ($rng << 13) & 0xffffffff;
		$rng ^= $rng >> 17;
		$rng ^= ($rng << 5) & 0xffffffff;
		$rng &= 0xffffffff;
		return $rng % $n;
	};

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

# The complete ack lines a client has printed so far: a client is a psql
# printing "ack|partition|seq|status|applied|rows" for each message after its
# commit, into the file $c->{out}; returns [epoch, partition, seq, status,
# applied, rows] for each.
sub read_acks
{
	my ($c, $epoch) = @_;
	my $text = -e $c->{out} ? slurp_file($c->{out}) : '';
	$text =~ s/[^\n]*\z//;    # a line still being written is not an ack yet
	my @acks;
	for my $line (split /\n/, $text)
	{
		die "unexpected output from client $c->{p}: $line"
		  unless $line =~ /^ack\|(\d+)\|(\d+)\|(\w+)\|([tf])\|(\d*)$/;
		die "client $c->{p} printed an ack for partition $1" unless $1 == $c->{p};
		push @acks, [ $epoch, $1, $2, $3, $4, $5 ];
	}
	return @acks;
}

1;
