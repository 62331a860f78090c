
# 041_lease_workers.pl
#
# Effects outside the database through leases, with workers that die.
# Several worker processes take "send" tasks: idem_begin (committed at once),
# then the external call, which a table "effects" stands for, written on a
# connection of its own as an outside system would see it, then
# idem_complete.  Meanwhile workers are killed with SIGKILL, most of them in
# the middle of a call, and replaced; now and then a worker stalls past its
# lease before completing.  In the end:
#   - every task is completed exactly once in the ledger, by the attempt
#     whose effect was the last one attempted (no completed task ran again);
#   - every effect was attempted by the attempt that held the key's lease at
#     that moment (each attempt is granted once; its effect lies within its
#     lease), so no two workers ever held one task at once;
#   - a worker whose lease was taken over is fenced off (ID003).
# Before that, idem_stat's counts of leases are checked on a fixed sequence.

use strict;
use warnings;

use File::Spec;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

my $ntasks = 32;
my $nworkers = 4;
my $nkills = 6;
my $lease = '2 s';

my $node = PostgreSQL::Test::Cluster->new('lease_workers');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'idempotent'");
$node->start;
$node->safe_psql('postgres', qq{
CREATE EXTENSION idempotent;
CREATE TABLE tasks (id text PRIMARY KEY);
INSERT INTO tasks SELECT 'send-' || i FROM generate_series(1, $ntasks) i;
-- what workers were granted, what they attempted, completed, and were refused
CREATE TABLE grants (task text, attempt int, worker int, lease_until timestamptz,
                     PRIMARY KEY (task, attempt));
CREATE TABLE effects (task text, attempt int, worker int, at timestamptz,
                      PRIMARY KEY (task, attempt));
CREATE TABLE completions (task text, attempt int, worker int);
CREATE TABLE fenced (task text, attempt int, worker int);
});

# idem_stat counts leases: started, in_progress, duplicate, completed, failed,
# dead, under policy lease; a message's failures under the key's policy
$node->safe_psql('postgres', q{
SELECT idem_stats_reset();
SET idempotent.max_attempts = 2;
SELECT idem_begin('st:1', '1 hour');
SELECT idem_begin('st:1', '1 hour');
SELECT idem_complete('st:1', 1);
SELECT idem_begin('st:1');
SELECT idem_begin('st:2', '1 hour');
SELECT idem_fail('st:2', 1, 'one');
SELECT idem_begin('st:2', '1 hour');
SELECT idem_fail('st:2', 2, 'two');
SELECT idem_begin('st:2');
SELECT idem_fail('st:m', NULL, 'one');
SELECT idem_fail('st:m', NULL, 'two');
SELECT idem_apply('st:m', NULL, 'SELECT 1');
});
$node->psql('postgres', q{SELECT idem_complete('st:1', 1)});
is($node->safe_psql('postgres', q{
SELECT string_agg(format('%s:%s/%s/%s/%s/%s/%s/%s/%s/%s/%s/%s', policy, calls, applied,
                         duplicate, stale, gap, in_progress, started, completed, failed,
                         dead, errors), ' ' ORDER BY policy)
FROM idem_stat WHERE calls > 0}),
	'lease:10/0/1/0/0/1/3/1/2/1/1 once:3/0/0/0/0/0/0/0/2/1/0',
	'idem_stat counts started, in_progress, duplicate, completed, failed, dead and errors');
$node->safe_psql('postgres', q{SELECT idem_stats_reset(); DELETE FROM idem_ledger});

# A worker: takes tasks not completed yet until there are none.  Runs in a
# child process, which must neither print TAP nor run the parent's END blocks.
sub worker
{
	my ($id) = @_;
	my $builder = Test::More->builder;
	$builder->output(File::Spec->devnull);
	$builder->failure_output(File::Spec->devnull);
	$builder->todo_output(File::Spec->devnull);

	my $db = $node->background_psql('postgres', on_error_stop => 0);
	my $fx = $node->background_psql('postgres', on_error_stop => 0);
	my $q = sub {
		my ($session, $sql) = @_;
		my $out = $session->query($sql);
		my $err = $session->{stderr};
		$session->{stderr} = '';
		return ($out, $err);
	};
	while (1)
	{
		my ($task) = $q->($db, q{
			SELECT t.id FROM tasks t
			WHERE NOT EXISTS (SELECT 1 FROM idem_ledger l WHERE l.key = t.id AND l.state = 'c')
			ORDER BY random() LIMIT 1});
		last if $task eq '';
		my ($out, $err) = $q->($db, qq{
			SELECT status || ',' || attempt || ',' || coalesce(lease_until::text, '')
			FROM idem_begin('$task', '$lease', jsonb_build_object('task', '$task'))});
		die "idem_begin failed: $err" if $err ne '';
		my ($status, $attempt, $until) = split /,/, $out, 3;
		if ($status ne 'started')
		{
			sleep(0.05);
			next;
		}
		$q->($fx, qq{INSERT INTO grants VALUES ('$task', $attempt, $id, '$until')});
		# the external call: attempted now, answered a little later
		$q->($fx, qq{INSERT INTO effects VALUES ('$task', $attempt, $id, clock_timestamp())});
		$q->($fx, q{SELECT pg_sleep(0.1 + random() * 0.1)});
		# now and then a worker stalls past its lease before it completes
		sleep(2.3) if rand() < 0.1;
		(undef, $err) = $q->($db, qq{
			SELECT idem_complete('$task', $attempt, jsonb_build_object('worker', $id))});
		if ($err eq '')
		{
			$q->($fx, qq{INSERT INTO completions VALUES ('$task', $attempt, $id)});
		}
		elsif ($err =~ /does not hold key/)
		{
			$q->($fx, qq{INSERT INTO fenced VALUES ('$task', $attempt, $id)});
		}
		else
		{
			die "idem_complete failed: $err";
		}
	}
	$db->quit;
	$fx->quit;
}

sub spawn
{
	my ($id) = @_;
	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		my $ok = eval { worker($id); 1 };
		print STDERR "worker $id: $@" unless $ok;
		POSIX::_exit($ok ? 0 : 1);
	}
	return $pid;
}

my %workers;    # pid => worker id
my $next_id = 1;
$workers{ spawn($next_id) } = $next_id++ for 1 .. $nworkers;

my $done = sub {
	$node->safe_psql('postgres',
		q{SELECT count(*) FROM idem_ledger WHERE state = 'c' AND key LIKE 'send-%'});
};

# kill a worker now and then, most likely in the middle of a call, and
# replace it; wait for every task to complete
my $kills = 0;
my $deadline = time() + 50;
my $failed_workers = 0;
while ($done->() < $ntasks && time() < $deadline)
{
	sleep(0.15 + rand(0.15));
	if ($kills < $nkills)
	{
		my @pids = keys %workers;
		my $victim = $pids[ int(rand(@pids)) ];
		kill 'KILL', $victim;
		waitpid($victim, 0);
		delete $workers{$victim};
		$kills++;
		$workers{ spawn($next_id) } = $next_id++;
	}
	# workers that ran out of tasks
	for my $pid (keys %workers)
	{
		next unless waitpid($pid, POSIX::WNOHANG()) > 0;
		$failed_workers++ if $? != 0;
		delete $workers{$pid};
	}
}
for my $pid (keys %workers)
{
	waitpid($pid, 0);
	$failed_workers++ if $? != 0;
}

is($failed_workers, 0, 'no worker met an unexpected error');
is($kills, $nkills, "$nkills workers were killed with SIGKILL");
is($done->(), $ntasks, 'every task is completed in the ledger');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM tasks t JOIN idem_ledger l ON l.key = t.id
WHERE l.policy = 'l' AND l.state = 'c' AND l.lease_until IS NULL AND l.result ? 'worker'}),
	$ntasks, 'each exactly once: one completed lease key per task, with its result');
cmp_ok($node->safe_psql('postgres', q{SELECT max(attempts) FROM idem_ledger WHERE key LIKE 'send-%'}),
	'>', 1, 'some leases were taken over after their workers died');

# every effect was attempted by the holder of the lease
is($node->safe_psql('postgres', q{
SELECT count(*) FROM effects e
WHERE NOT EXISTS (SELECT 1 FROM grants g
                  WHERE (g.task, g.attempt, g.worker) = (e.task, e.attempt, e.worker)
                    AND e.at < g.lease_until)}),
	'0', 'every effect was attempted by the attempt holding the lease, within its lease');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM grants g JOIN grants h ON h.task = g.task AND h.attempt > g.attempt
JOIN effects e ON (e.task, e.attempt) = (g.task, g.attempt)
WHERE e.at >= h.lease_until - interval '2 s'}),
	'0', 'no attempt made its effect after a later attempt was granted');

# no completed task ran again: the completing attempt is the last one that
# was granted and that attempted its effect
is($node->safe_psql('postgres', q{
SELECT count(*) FROM tasks t JOIN idem_ledger l ON l.key = t.id
WHERE l.attempts <> (SELECT max(attempt) FROM grants g WHERE g.task = t.id)
   OR l.attempts <> (SELECT max(attempt) FROM effects e WHERE e.task = t.id)}),
	'0', 'no task was begun or attempted again after its completion');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM completions c JOIN idem_ledger l ON l.key = c.task
WHERE c.attempt <> l.attempts OR (l.result->>'worker')::int <> c.worker}),
	'0', 'each completion the workers saw is the one the ledger holds');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT task FROM completions GROUP BY task HAVING count(*) > 1) x}),
	'0', 'no task was completed twice');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM fenced f JOIN idem_ledger l ON l.key = f.task WHERE f.attempt >= l.attempts}),
	'0', 'only attempts that were taken over were fenced off');

# the statistics saw every completion
cmp_ok($node->safe_psql('postgres', q{SELECT completed FROM idem_stat WHERE policy = 'lease'}),
	'>=', $ntasks, 'idem_stat counted the completions');

$node->stop('fast');
done_testing();
