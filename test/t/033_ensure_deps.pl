
# 033_ensure_deps.pl
#
# idem_ensure_deps (scripts/lib.sh) decides what to install by the files the
# build and the suites need, each by itself: on Debian's 15.20, PGXS and
# pg_isolation_regress come with postgresql-client-15, so a machine can have
# them and still lack the server headers.  The function runs here with
# apt-get and sudo replaced by stubs that only write down what they were
# asked, and with one directory at a time pointed somewhere empty.

use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $calls = "$tmp/apt-get.calls";
mkdir "$tmp/bin" or die "mkdir: $!";
for my $stub (
	[ 'apt-get', qq{#!/bin/sh\necho "\$*" >> '$calls'\n} ],
	[ 'sudo',    qq{#!/bin/sh\nexec "\$@"\n} ])
{
	my $path = "$tmp/bin/$stub->[0]";
	open my $fh, '>', $path or die "open $path: $!";
	print $fh $stub->[1];
	close $fh;
	chmod 0755, $path or die "chmod $path: $!";
}

# ensure_deps([ARG, ...], VAR => value, ...): the packages idem_ensure_deps
# ARG... installs with these paths, and its output
sub ensure_deps
{
	my ($args, %env) = @_;
	unlink $calls;
	local %ENV = (%ENV, PATH => "$tmp/bin:$ENV{PATH}", %env);
	my ($stdout, $stderr) = run_command(
		[ 'bash', '-c', '. scripts/lib.sh && idem_ensure_deps "$@"', 'ensure_deps', @$args ]);
	my $installed = '';
	if (-e $calls)
	{
		($installed) = slurp_file($calls) =~ /^install -y -q (.*)$/m;
	}
	return ($installed // '', $stdout . $stderr);
}

my ($installed, $out) = ensure_deps([]);
is($installed, '', 'with everything there, nothing is installed');

($installed, $out) = ensure_deps([], PG_INCLUDEDIR_SERVER => "$tmp/none");
is($installed, 'postgresql-server-dev-15',
	'without the server headers, postgresql-server-dev-15 is installed, though PGXS is there');
like($out, qr{missing \Q$tmp\E/none/postgres\.h \(postgresql-server-dev-15\)},
	'and the missing header is named');

($installed, $out) = ensure_deps([], PG_PGXS_DIR => "$tmp/none");
is($installed, 'postgresql-client-15',
	'without PGXS and the test programs, postgresql-client-15 is installed, once');

($installed, $out) = ensure_deps([], PG_BINDIR => "$tmp/none");
is($installed, 'postgresql-15 postgresql-client-15',
	'without the server programs and pg_config, postgresql-15 and postgresql-client-15');

# a caller's FILE|PKG: the package is installed when that file is missing, not
# because another file of it is
($installed, $out) = ensure_deps([ "$tmp/none/plproxy.so|postgresql-15-plproxy", "$0|libpq-dev" ]);
is($installed, 'postgresql-15-plproxy',
	'a caller\'s package is installed when the file it needs is missing, and only then');
like($out, qr{missing \Q$tmp\E/none/plproxy\.so \(postgresql-15-plproxy\)}, 'and the file is named');

# a package named without the file it is for is refused: dpkg's word is not taken
($installed, $out) = ensure_deps([ "libpq-dev" ]);
is($installed, '', 'a bare package name installs nothing');
like($out, qr{'libpq-dev' is not FILE\|PKG}, 'and is refused');

done_testing();
