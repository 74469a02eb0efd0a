# The job's wrapper in perl: sh/wrapper.sh's twin, run by the process a perl submit forked for
# the job once it has claimed the job and recorded its pid (submit.pl's record_wrapper). That
# process stays the wrapper instead of starting /bin/sh for run.sh, so that a job costs its
# host one fork besides the job itself: no shell to start, no subshell, no wc and no mv at the
# end. The same steps in the same order, with the same records, messages and exit statuses;
# tests/unit/test_wrapper.py runs both twins on the same jobs, hostile ones included.
# Self-contained (submit.pl uses its file helpers), builtins only, no module.

# `printf ... > PATH`: whether CONTENT was written (and the file closed).
sub write_file {
    my ($path, $content) = @_;
    open(my $fh, '>', $path) or return 0;
    my $ok = print $fh $content;
    return close($fh) && $ok;
}

# process.sh's fs_full DIR (only after a write failed: df is a process).
sub full_at {
    open(my $df, '-|', 'df', '-P', '-k', $_[0]) or return 0;
    my @lines = <$df>;
    close $df;
    return 0 if @lines < 2;
    my @fields = split ' ', $lines[1];
    for my $i (1 .. $#fields) {
        return $fields[ $i - 1 ] eq '0' ? 1 : 0 if $fields[$i] =~ /%\z/;
    }
    return 0;
}

# What `IFS= read -r v < PATH` gives: the first line as it is ('' if unreadable).
sub whole_first_line {
    # Raw bytes, whatever PERL_UNICODE or PERLIO the host's environment sets.
    open(my $fh, '<:raw', $_[0]) or return '';
    my $line = <$fh>;
    close $fh;
    return '' unless defined $line;
    chomp $line;
    return $line;
}

# env.sh's `export NAME=value` lines as the submit writes them (environment.py's
# render_env_file: each value one shell word, bare or in single quotes, a quote itself as
# "'"), as [NAME, value] pairs in order; undef for anything else, which run.sh then sources.
sub environment_of {
    open(my $fh, '<:raw', $_[0]) or return undef;
    my $text = do { local $/; <$fh> };
    close $fh;
    $text = '' unless defined $text;
    my @pairs;
    while ($text =~ /\Gexport ([A-Za-z_][A-Za-z0-9_]*)=((?:'[^']*'|"'"|[A-Za-z0-9_\@%+=:,.\/-]+)*)\n/gc) {
        my ($name, $word, $value) = ($1, $2, '');
        $value .= defined $1 ? $1 : defined $2 ? $2 : $3 while $word =~ /\G(?:'([^']*)'|"(')"|([^'"]+))/gc;
        push @pairs, [ $name, $value ];
    }
    return (pos($text) || 0) == length($text) ? \@pairs : undef;
}

# shebang.sh's shebang_of LINE: (interpreter, its one argument or ''), or () after saying why
# the line would only fail later.
sub shebang_of {
    my $line = substr($_[0], 2);
    $line =~ s/\A[\t ]+//;
    $line =~ s/[\t ]+\z//;
    return ('/bin/sh', '') if $line eq '';
    if ($line =~ /[\x00-\x1f\x7f]\z/) {
        print STDERR "ssh-jobs: the #! line of the command ends with a control character (a carriage return: Windows line endings?); write the command with Unix line endings\n";
        return ();
    }
    my ($interpreter, $argument) = $line =~ /\A([^\t ]*)[\t ]*(.*)\z/s;
    $interpreter = "./$interpreter" unless $interpreter =~ m{\A/};
    return ($interpreter, $argument);
}

# The machine's architecture as the kernel names it ('' where it does not say).
sub kernel_arch {
    my $path = '/proc/sys/kernel/arch';
    return '' unless -r $path;
    my $arch = whole_first_line($path);
    $arch =~ s/\s+\z//;
    return $arch;
}

# wrapper.sh's cannot_run PATH, and what the kernel then says: 127 with the reason for a
# missing file, 126 for one that is not an executable file (a directory; no permission to
# execute it, as the shells' `test -x` asks the kernel), the reason said on stderr.
sub cannot_run {
    my ($path, $errno) = @_;
    unless (-e $path) {
        print STDERR "ssh-jobs: cannot run $path: no such file\n";
        return 127;
    }
    if (-d _ || (defined $errno && $errno == 13)) {
        print STDERR "ssh-jobs: cannot run $path: not an executable file\n";
        return 126;
    }
    return 0;
}

# execve(2)'s number where it is known for sure (see submit.pl's new_session): perl's exec
# goes through execvp, which hands a file the kernel cannot execute to /bin/sh as a script,
# even a binary for another machine; the shells refuse a binary.
my %execve_call = (x86_64 => 59, aarch64 => 221, riscv64 => 221);

# Replace this process with COMMAND (its path first); returns the errno when that failed.
sub exec_command {
    my @command = @_;
    my $number = $execve_call{ kernel_arch() };
    if (defined $number && length(pack 'p', 'x') == 8) {
        # perl ignores SIGFPE while it runs and gives it back in its own exec.
        $SIG{FPE} = 'DEFAULT';
        my @environment = map { "$_=$ENV{$_}" } sort keys %ENV;
        # NULL-terminated arrays of pointers into @command's and @environment's strings.
        my $arguments = pack('p*', @command) . pack('x8');
        my $variables = pack('p*', @environment) . pack('x8');
        syscall($number, $command[0], $arguments, $variables);
    } else {
        exec { $command[0] } @command;
    }
    return $! + 0;
}

# A file the kernel cannot execute (ENOEXEC): run as a shell script by /bin/sh, as the shells
# and execvp do, unless it holds a NUL byte at its start (a binary, as the shells judge).
sub exec_format_error {
    my @command = @_;
    my $head = '';
    if (open(my $fh, '<:raw', $command[0])) {
        read $fh, $head, 256;
        close $fh;
    }
    if ($head !~ /\0/) {
        my $errno = exec_command('/bin/sh', @command);
        print STDERR "ssh-jobs: cannot run /bin/sh: errno $errno\n";
        return 126;
    }
    print STDERR "ssh-jobs: cannot run $command[0]: not an executable file for this machine\n";
    return 126;
}

# The path `cd PATH` makes the shell's PWD: "." and empty components dropped, ".." taking the
# one before it away, as a POSIX shell does without looking at the file system (cd -L).
sub logical_path {
    my @kept;
    for my $part (split m{/}, $_[0]) {
        next if $part eq '' || $part eq '.';
        if ($part eq '..') { pop @kept } else { push @kept, $part }
    }
    # Exactly two slashes at the start may mean something else (POSIX): the shells keep them.
    return ($_[0] =~ m{\A//(?!/)} ? '//' : '/') . join('/', @kept);
}

# The working directory as wrapper.sh expands it: the home directory for '' and '~'.
sub expanded_work_dir {
    my ($dir) = @_;
    my $home = defined $ENV{HOME} ? $ENV{HOME} : '';
    return $home ne '' ? $home : '/' if $dir eq '' || $dir eq '~';
    return $home . substr($dir, 1) if substr($dir, 0, 2) eq '~/';
    return $dir;
}

# The job's process (wrapper.sh's subshell): enter the working directory, take the job's
# environment, start the command. Returns a status only when it could not start it.
sub start_job {
    my ($job_dir, $first, $shell, $environment) = @_;
    my $work_dir = expanded_work_dir(-f 'workdir' ? whole_first_line('workdir') : '');
    # The shells enter the path with its ".." taken away by text, not by following links.
    unless (chdir logical_path($work_dir)) {
        print STDERR "ssh-jobs: cannot enter the working directory $work_dir\n";
        return 126;
    }
    # What the shell's two cd commands leave in the environment.
    @ENV{qw(OLDPWD PWD)} = (logical_path($job_dir), logical_path($work_dir));
    my $marker = whole_first_line("$job_dir/marker");
    $marker =~ s/\A[\t ]+//;
    $marker =~ s/[\t ]+\z//;
    $job_dir =~ m{([^/]*)\z};
    @ENV{qw(SSH_JOBS_JOB_ID SSH_JOBS_JOB_DIR SSH_JOBS_LOG_FILE SSH_JOBS_JOB_MARKER)} =
      ($1, $job_dir, "$job_dir/stdout.log", $marker);
    my @command = ($shell, "$job_dir/command.sh");
    if (substr($first, 0, 2) eq '#!') {
        my ($interpreter, $argument) = shebang_of($first) or return 126;
        @command = ($interpreter, ($argument ne '' ? $argument : ()), "$job_dir/command.sh");
    }
    $ENV{ $_->[0] } = $_->[1] for @$environment;
    my $status = cannot_run($command[0]);
    return $status if $status;
    my $errno = exec_command(@command);
    return exec_format_error(@command) if $errno == 8;
    return cannot_run($command[0], $errno) || do {
        print STDERR "ssh-jobs: cannot run $command[0]: errno $errno\n";
        126;
    };
}

# The signal the wrapper's handlers caught last ('' for none since the job's fork).
my $caught_signal = '';

sub note_signal { $caught_signal = $_[0] }

# The command in a process of its own, its output appended to stdout.log: its exit status as
# a shell gives it (128 + the signal for one killed by a signal).
sub run_job {
    my ($job_dir, $first, $shell, $environment) = @_;
    my $log;
    return 2 unless open($log, '>>:raw', "$job_dir/stdout.log");
    $caught_signal = '';
    my $pid = fork;
    unless (defined $pid) {
        print $log "ssh-jobs: cannot start the job: $!\n";
        return 2;
    }
    unless ($pid) {
        # As a subshell: the wrapper's handlers are not the job's (INT and QUIT stay ignored).
        # A signal to the group that came before this line is the job's: it dies of it.
        @SIG{qw(HUP TERM)} = ('DEFAULT', 'DEFAULT');
        kill $caught_signal, $$ if $caught_signal ne '';
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>&', $log);
        open(STDERR, '>&', $log);
        binmode $_ for \*STDOUT, \*STDERR;
        close $log;
        exit start_job($job_dir, $first, $shell, $environment);
    }
    close $log;
    # perl's waitpid itself waits on through the signals the handlers catch.
    return 2 unless waitpid($pid, 0) == $pid;
    return $? & 127 ? 128 + ($? & 127) : $? >> 8;
}

# wrapper.sh's end: the exit record, with the log's size as the job ended and a note when the
# file system is full, renamed into place (or written over exit_code.new, which needs no free
# block).
sub record_end {
    my ($status) = @_;
    my $log_end = '';
    if (-f 'stdout.log' && open(my $log, '<', 'stdout.log')) {
        $log_end = -s $log || 0;
        close $log;
    }
    my $note = '';
    my $probe;
    if (!(open($probe, '>>', 'fs_probe') && print($probe 'x') && close($probe))) {
        $note = 'nospace';
    } elsif ($status != 0 && full_at('.')) {
        $note = 'nospace';
    }
    my $record = "$status log=$log_end" . ($note ne '' ? " $note" : '') . "\n";
    return if write_file('exit_code.tmp', $record) && rename('exit_code.tmp', 'exit_code');
    # `1<>`: read-write, created if missing, never truncated.
    my $reserve;
    if (open($reserve, '+<', 'exit_code.new') || open($reserve, '+>', 'exit_code.new')) {
        my $written = print $reserve $record;
        rename('exit_code.new', 'exit_code') if close($reserve) && $written;
    }
    unlink 'exit_code.tmp';
}

# The wrapper from its claim on (run.sh "recorded"): never returns once it has taken the job
# over; returns at once, having done nothing, when env.sh is not as the submit writes it.
sub run_wrapper {
    my ($job_dir, $bash) = @_;
    my $environment = environment_of("$job_dir/env.sh");
    return unless defined $environment;
    chdir $job_dir or exit 1;
    $0 = "ssh-jobs wrapper $job_dir";
    # Record a status even when the group is signalled: the job's end is waited for.
    @SIG{qw(HUP TERM)} = (\&note_signal, \&note_signal);
    my $first = whole_first_line('command.sh');
    record_end(run_job($job_dir, $first, $bash ne '' ? $bash : '/bin/sh', $environment));
    exit 0;
}
