
# 031_steady_state.pl
#
# Retention in steady state: new keys arrive at a constant rate with a short
# time to live while a loop purges expired keys in small batches, as a purge
# worker would.  After several ttl periods:
#  - the ledger's live rows stay bounded by what the rate and the ttl allow
#    (rate x (ttl + purge lag) x slack), period after period;
#  - with a VACUUM each period, the ledger's heap and its indexes stop
#    growing: in the second half of the run each grows by less than half of
#    what the keys produced in that half occupy when nothing is purged;
#  - nothing is lost or purged twice: every key produced is purged exactly
#    once (the purge counts add up to the number of keys).
# IDEM_STEADY_PURGE_BATCH=0 (purge nothing) shows the bounds failing.
# The measured purge throughput (keys per second through a backlog, batches
# of 1000, one session) is printed as a note.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time sleep);

my $TTL      = 2;      # seconds
my $RATE     = 400;    # new keys per second (pgbench -R, one client: the heap grows a page at a time)
my $PURGE_HZ = 20;     # purge calls per second
my $BATCH    = $ENV{IDEM_STEADY_PURGE_BATCH} // 100;    # max_keys per purge call
my $PERIODS  = 12;     # ttl periods measured after the warm-up
my $WARMUP   = 2;      # ttl periods before the first sample

my $node = PostgreSQL::Test::Cluster->new('steady_state');
$node->init;
$node->append_conf(
	'postgresql.conf', qq(
autovacuum = off
log_statement = none
log_min_duration_statement = -1
max_connections = 20
));
$node->start;

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION idempotent;
CREATE SEQUENCE keyseq;
CREATE TABLE purge_log (at timestamptz NOT NULL DEFAULT clock_timestamp(), n bigint NOT NULL);
ALTER DATABASE postgres SET idempotent.ttl = $TTL;
});

# What each relation takes per key when nothing is purged, measured in a
# scratch database on keys of the same shape, one per transaction: the
# yardstick for growth below.
$node->safe_psql('postgres', 'CREATE DATABASE yardstick');
my $CAL = 5000;
my @out = split /\n/, $node->safe_psql('yardstick', qq{
CREATE EXTENSION idempotent;
SET idempotent.ttl = '1h';
DO \$\$BEGIN FOR i IN 1 .. $CAL LOOP
  PERFORM idem_apply('k:' || i, NULL, 'SELECT 1 AS one');
  COMMIT;    -- one transaction per key, as produced below: each its own expiry
END LOOP; END\$\$;
VACUUM idem_ledger;
SELECT pg_relation_size('idem_ledger'), pg_relation_size('idem_ledger_pkey'),
       pg_relation_size('idem_ledger_expires_at');
});
my %density;
@density{qw(heap pkey expiry)} = map { $_ / $CAL } split /\|/, $out[-1];
note sprintf('bytes per key unpurged: heap %.0f, pkey %.0f, expiry index %.0f',
	@density{qw(heap pkey expiry)});

my $dir = $node->basedir;
PostgreSQL::Test::Utils::append_to_file("$dir/produce.sql",
	qq{SELECT status FROM idem_apply('k:' || nextval('keyseq'), NULL, 'SELECT 1 AS one');\n});
PostgreSQL::Test::Utils::append_to_file("$dir/purge.sql",
	qq{INSERT INTO purge_log (n) SELECT idem_purge($BATCH);\n});

my $duration = int($TTL * ($WARMUP + $PERIODS) + 2);
my @conn = ('-h', $node->host, '-p', $node->port, '-n', 'postgres');
my ($p_out, $p_err, $q_out, $q_err) = ('', '', '', '');
my $producer = IPC::Run::start(
	[ 'pgbench', @conn, '-c', '1', '-R', $RATE, '-T', $duration, '-f', "$dir/produce.sql" ],
	'>', \$p_out, '2>', \$p_err);
my $purger = IPC::Run::start(
	[ 'pgbench', @conn, '-c', '1', '-R', $PURGE_HZ, '-T', $duration + $TTL + 1, '-f', "$dir/purge.sql" ],
	'>', \$q_out, '2>', \$q_err);

# One sample per ttl period: live rows, then VACUUM, then sizes.
my $t0 = time;
my @samples;
for my $i (1 .. $WARMUP + $PERIODS)
{
	my $wait = $t0 + $i * $TTL - time;
	sleep($wait) if $wait > 0;
	my ($live, $produced) = split /\|/, $node->safe_psql('postgres',
		q{SELECT (SELECT count(*) FROM idem_ledger), (SELECT last_value FROM keyseq)});
	$node->safe_psql('postgres', 'VACUUM idem_ledger');
	my ($heap, $pkey, $expiry) = split /\|/, $node->safe_psql('postgres',
		q{SELECT pg_relation_size('idem_ledger'), pg_relation_size('idem_ledger_pkey'),
		         pg_relation_size('idem_ledger_expires_at')});
	my $s = { at => time - $t0, live => $live, produced => $produced,
		heap => $heap, pkey => $pkey, expiry => $expiry };
	push @samples, $s if $i > $WARMUP;
	note sprintf('t=%5.1fs produced %6d live %5d heap %4d kB pkey %4d kB expiry index %4d kB',
		$s->{at}, $produced, $live, $heap / 1024, $pkey / 1024, $expiry / 1024);
}

ok($producer->finish, 'the producer ran to its end');
like($p_out, qr/number of failed transactions: 0 /, 'no key failed to apply');

# The rate achieved, from the keys produced while sampling.
my $rate = ($samples[-1]{produced} - $samples[0]{produced}) /
  ($samples[-1]{at} - $samples[0]{at});
note sprintf('achieved rate %.0f keys/s (asked %d)', $rate, $RATE);
cmp_ok($rate, '>=', $RATE * 0.8, 'the producer kept close to its rate');

# Live rows: keys not expired yet (rate x ttl) plus the expired ones a purge
# has not reached yet (rate x one purge interval, plus the sampling's own
# time); slack 1.5 for bursts.
my $bound = int($rate * ($TTL + 1.0 / $PURGE_HZ + 0.5) * 1.5);
my @live  = map { $_->{live} } @samples;
my $max_live = (sort { $b <=> $a } @live)[0];
note "live rows per period: @live; bound $bound";
cmp_ok($max_live, '<=', $bound, "live rows stay within rate x (ttl + lag) x 1.5 = $bound");
cmp_ok((sort { $a <=> $b } @live)[0], '>=', int($rate * $TTL * 0.5),
	'and the ledger is not empty: keys live for their ttl');

# Sizes after VACUUM wobble with the timing of purges and inserts, and a
# stall of this busy machine (a burst of inserts, a late purge) leaves a step
# that VACUUM does not give back.  Steady state means no trend: in the second
# half of the run a relation grows by less than half of what the keys
# produced in that half take when nothing is purged (bytes per key from the
# yardstick database).  Without purging it grows by all of it.
my $n1 = int(@samples / 2);
my @first  = @samples[ 0 .. $n1 - 1 ];
my @second = @samples[ $n1 .. $#samples ];
my $last = $samples[-1];
my $produced2 = $last->{produced} - $first[-1]{produced};
for my $rel (qw(heap pkey expiry))
{
	my ($max1) = sort { $b <=> $a } map { $_->{$rel} } @first;
	my ($max2) = sort { $b <=> $a } map { $_->{$rel} } @second;
	my $unpurged = int($produced2 * $density{$rel});
	cmp_ok($max2 - $max1, '<=', $unpurged / 2 + 2 * 8192,
		"$rel: grows by " . ($max2 - $max1) . " bytes in periods " . ($n1 + 1) . "-$PERIODS"
		  . " (largest $max2, before $max1), less than half of the $unpurged its $produced2 new keys take unpurged");
}
# and what was reached is about what the live rows need, not the keys produced
cmp_ok($last->{heap}, '<', $last->{produced} * 40,
	'the heap is far smaller than all keys produced would take');

# Exact accounting once the producer stopped and every key expired.
ok($purger->finish, 'the purge loop ran to its end');
like($q_out, qr/number of failed transactions: 0 /, 'no purge call failed');
my $wait = $TTL + 0.2;
sleep($wait);
my $final = $node->safe_psql('postgres', 'SELECT idem_purge(2000000000)');
my ($produced, $purged, $left, $calls) = split /\|/, $node->safe_psql('postgres',
	q{SELECT (SELECT last_value FROM keyseq), (SELECT sum(n) FROM purge_log),
	         (SELECT count(*) FROM idem_ledger), (SELECT count(*) FROM purge_log)});
note "produced $produced keys; the purge loop made $calls calls and purged $purged; the final purge $final";
is($purged + $final, $produced, 'every key produced was purged exactly once');
is($left, '0', 'the ledger is empty');
cmp_ok($purged, '>=', $produced - $rate * ($TTL + 2),
	'the purge loop kept up: at most the last ttl of keys was left to the final purge');

# Purge throughput: a backlog of expired keys purged in batches of 1000.
$node->safe_psql('postgres', q{
SET idempotent.ttl = '1h';
SELECT count(*) FROM generate_series(1, 50000) i, idem_apply('b:' || i, NULL, 'SELECT 1');
UPDATE idem_ledger SET expires_at = now() - interval '1 second';
VACUUM ANALYZE idem_ledger;
});
my $session = $node->background_psql('postgres', on_error_stop => 1);
$session->query_safe('SELECT idem_purge(0)');    # load the library, open the ledger
my $start = time;
my $total = 0;
for (1 .. 100)
{
	my $n = $session->query_safe('SELECT idem_purge(1000)');
	$total += $n;
	last if $n == 0;
}
my $secs = time - $start;
$session->quit;
is($total, 50000, 'the backlog of 50000 expired keys is purged in batches');
note sprintf('purge throughput: %d keys in %.3f s = %.0f keys/s (batches of 1000, one transaction each, one session)',
	$total, $secs, $total / $secs);

$node->stop;
done_testing();
