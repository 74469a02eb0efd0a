# Submits in ONE perl process: for every submit what sh/submit.sh's begin, put, launch and
# finish do, with the same checks in the same order and the same answers byte for byte, but
# without starting a tool per check or per file: the only process a submit starts is its
# job's wrapper, which then stays the wrapper (perl/wrapper.pl). Only perl's builtins are
# used, no module. In one program it follows perl/wrapper.pl, whose file helpers it uses, and
# precedes perl/poll.pl, whose subroutines it shares and whose loop then answers the polls
# that follow the submits.
# Its records come first after __END__ (lengths in bytes, contents raw):
#   wrapper LENGTH \n <run.sh>
#   submit KEY WAIT TOKEN JOB_ID BASE        (tab-separated; BASE last: it may hold blanks)
#   file NAME LENGTH \n <content>            (each file of that submit, run.sh excepted)
#   polls                                    (the end of the submits; poll lines follow)
# KEY "-" is the worker's single submit: it answers "submit os=... launched=N" and, when
# refused, stops the program (like the sh form's exit). A batch's submits answer as
# sh/submit.sh's batch functions do, refusals as they come and the headers after all.
# WAIT 1: wait (bounded, ~5 s) for the wrapper's pid before answering.
my ($submit_tag) = @ARGV;
binmode DATA;
binmode STDOUT;
my $me = $>;
my ($wrapper_text, %base_ok, @answered, $submit_os);
# One submit's state, as the sh form's globals: base, job dir, token, what it created.
my ($base, $jd, $tok, $key, $job_created, $launched);

# lib.sh's stat_of, without ls: the mode string ls -ldn shows (ten characters) and the owner.
sub mode_string {
    my ($mode) = @_;
    my $type = -l _ ? 'l' : -d _ ? 'd' : -f _ ? '-' : -p _ ? 'p' : -S _ ? 's' : -c _ ? 'c' : -b _ ? 'b' : '?';
    my @bits = split //, 'rwxrwxrwx';
    my $text = join '', map { $mode & (1 << (8 - $_)) ? $bits[$_] : '-' } 0 .. 8;
    for ([ 04000, 2, 's' ], [ 02000, 5, 's' ], [ 01000, 8, 't' ]) {
        my ($bit, $at, $letter) = @$_;
        next unless $mode & $bit;
        substr($text, $at, 1) = substr($text, $at, 1) eq '-' ? uc $letter : $letter;
    }
    return $type . $text;
}

sub stat_of {
    my @stat = lstat $_[0];
    return ('', '') unless @stat;
    return (mode_string($stat[2]), $stat[4]);
}

sub trusted { return $_[0] eq $me || $_[0] eq '0' }

# submit.sh's unsafe: why DIR may not be trusted, or ''.
sub unsafe {
    my ($m, $o) = stat_of($_[0]);
    return 'cannot be examined' if $m eq '';
    return 'is a symbolic link' if $m =~ /\Al/;
    return 'is not a directory' if $m !~ /\Ad/;
    return "is owned by uid $o, not by the SSH user (uid $me) or root" unless trusted($o);
    return '' if substr($m, 9, 1) =~ /[tT]/;
    return "is writable by group or others (mode $m) and not sticky"
      if substr($m, 5, 1) eq 'w' || substr($m, 8, 1) eq 'w';
    return '';
}

# What `cd -P LINK && pwd -P` gives: the path with every symbolic link resolved (undef if a
# link cannot be read, or there are too many).
sub physical {
    my @todo = grep { $_ ne '' } split m{/}, $_[0];
    my (@done, $links);
    while (@todo) {
        my $part = shift @todo;
        next if $part eq '.';
        if ($part eq '..') { pop @done; next }
        my $here = '/' . join '/', @done, $part;
        if (-l $here) {
            my $to = readlink $here;
            return undef if !defined $to || ++$links > 40;
            @done = () if $to =~ m{\A/};
            unshift @todo, grep { $_ ne '' } split m{/}, $to;
            next;
        }
        push @done, $part;
    }
    return '/' . join '/', @done;
}

# submit.sh's check_chain: "<component> <reason>" for the first untrusted component, or ''.
sub check_chain {
    my ($path) = @_;
    my $why = unsafe('/');
    return "/ $why" if $why ne '';
    my $c = '';
    for my $part (grep { $_ ne '' } split m{/}, $path) {
        $c .= "/$part";
        my ($m, $o) = stat_of($c);
        if ($m =~ /\Al/) {
            return "$c is a symbolic link owned by uid $o, not by the SSH user (uid $me) or root" unless trusted($o);
            my $phys = chdir($c) ? physical($c) : undef;
            chdir '/';
            return "$c cannot be entered" unless defined $phys;
            $why = check_chain($phys);
            return $why if $why ne '';
        } else {
            $why = unsafe($c);
            return "$c $why" if $why ne '';
        }
    }
    return '';
}

# submit.sh's refuse: undo what this submit created, answer, and stop this submit.
sub refuse {
    my ($code, $message) = @_;
    system('rm', '-rf', '--', $jd) if $job_created;
    if ($key eq '-') {
        print "$submit_tag submit error=$code\n$message\n";
        exit 0;
    }
    print "$submit_tag submit key=$key error=$code len=" . (length($message) + 1) . "\n$message\n";
    die "refused\n";
}

sub abort {
    my ($what) = @_;
    refuse('nospace', "the file system holding $base is full (no space left while $what)") if full_at($base);
    refuse('io', "could not complete $what in $jd (a used-up disk quota looks like this too)");
}

# submit.sh's ensure_base: check the deepest existing directory of BASE and the path to it,
# then create what is missing below it with mode 700.
sub ensure_base {
    my $d = $base;
    my @missing;
    while (!-e $d && !-l $d) {
        my ($parent, $name) = $d =~ m{\A(.*)/([^/]*)\z};
        unshift @missing, $name;
        $d = $parent eq '' ? '/' : $parent;
    }
    my $why = check_chain($d);
    refuse('unsafe', $why) if $why ne '';
    $d = '' if $d eq '/';
    for my $name (@missing) {
        $d .= "/$name";
        next if mkdir $d, 0700;
        abort("creating $d (its parent must be writable by the SSH user)") unless -e $d || -l $d;
        # Created meanwhile by someone else (often another task of the same fan-out).
        $why = unsafe($d);
        refuse('unsafe', "$d $why") if $why ne '';
    }
}

# submit.sh's begin: the job directory exists afterwards, is ours, private, carries the
# token; returns 1 when a wrapper already claimed it (this submit re-attaches).
sub begin {
    ensure_base() unless $base_ok{$base};
    $base_ok{$base} = 1;
    if ($key ne '-') {
        my $ended = ended_of($jd, $tok);
        if (defined $ended) {
            print "$submit_tag submit key=$key ended=$ended len=0\n";
            die "ended\n";
        }
    }
    my $t = '';
    if (mkdir $jd, 0700) {
        $job_created = 1;
    } elsif (-e $jd || -l $jd) {
        my ($m, $o) = stat_of($jd);
        if ($m !~ /\Ad/ || $o ne $me) {
            refuse('foreign', "$jd exists but is not a directory of the SSH user's (mode "
                  . ($m eq '' ? '?' : $m) . ', owner uid ' . ($o eq '' ? '?' : $o) . ')');
        }
        refuse('foreign', "$jd exists but is accessible to group or others (mode $m)") unless $m =~ /\Ad...------/;
        $t = file_line("$jd/token");
        if ($t ne $tok) {
            refuse('foreign', "$jd was created by another submit, not by this task instance")
              if $t ne '' || -e "$jd/claimed";
            # A submit of ours that stopped before recording its token: nothing ran; take it over.
            $job_created = 1;
        }
    } else {
        abort("creating $jd");
    }
    put('token', "$tok\n") if $t ne $tok;
    return -d "$jd/claimed" ? 1 : 0;
}

# submit.sh's put: write a file of the job directory atomically (tmp + rename), byte for byte.
sub put {
    my ($name, $content) = @_;
    my $tmp = "$jd/$name.tmp.$$";
    # mv would move the file INTO a directory of that name; say so instead, as the sh form does.
    abort("writing $name") if -d "$jd/$name";
    my $fh;
    abort("writing $name") unless open($fh, '>', $tmp);
    binmode $fh;
    my $ok = print $fh $content;
    abort("writing $name") unless close($fh) && $ok && rename($tmp, "$jd/$name");
}

# Where `command -v NAME` would find a program in PATH (looked up once per program: every
# submit of a batch asks, before it forks its wrapper).
my %in_path;

sub in_path {
    my ($name) = @_;
    $in_path{$name} = find_in_path($name) unless exists $in_path{$name};
    return $in_path{$name};
}

sub find_in_path {
    my ($name) = @_;
    for my $dir (split /:/, defined $ENV{PATH} ? $ENV{PATH} : '', -1) {
        my $path = ($dir eq '' ? '.' : $dir) . "/$name";
        return $path if -f $path && -x _;
    }
    return '';
}

# submit.sh's launch: the wrapper, detached, in a session of its own (setsid) or immune to
# hangups (nohup). Kept one step on its own: it is the one that starts the job.
sub launch_wrapper {
    chmod(0700, "$jd/command.sh") or abort('making command.sh executable');
    my $log;
    abort('creating stdout.log') unless open($log, '>>', "$jd/stdout.log");
    close $log;
    my ($setsid, $bash) = (in_path('setsid'), in_path('bash'));
    put('launcher', $setsid ne '' ? 'setsid' : 'nohup');
    $launched = 1;
    my $pid = fork;
    return if !defined $pid || $pid;
    # The child becomes the wrapper, and never returns into the submits (they are the
    # parent's): whatever fails here, even a die, ends it.
    eval { become_wrapper($setsid, $bash) };
    exit 127;
}

# What `cmd </dev/null >/dev/null 2>&1 &` gives a job of a non-interactive shell (interrupts
# and quits ignored), then setsid or nohup, then the wrapper.
sub become_wrapper {
    my ($setsid, $bash) = @_;
    @SIG{qw(INT QUIT)} = ('IGNORE', 'IGNORE');
    open(STDIN, '<', '/dev/null');
    open(STDOUT, '>', '/dev/null');
    open(STDERR, '>', '/dev/null');
    my @wrapper = ('/bin/sh', "$jd/run.sh", $jd);
    if ($setsid eq '') {
        $SIG{HUP} = 'IGNORE';
    } elsif (!new_session()) {
        unshift @wrapper, $setsid;
    } elsif (record_wrapper()) {
        # This process stays the wrapper (perl/wrapper.pl); run.sh only for an env.sh it does
        # not read as the submit wrote it.
        run_wrapper($jd, $bash);
        push @wrapper, 'recorded', $bash;
    }
    exec { $wrapper[0] } @wrapper;
}

# The wrapper's first steps (sh/wrapper.sh), taken by the process that becomes the wrapper,
# with builtins: claim the job, then record its start time and boot id, then its pid. It then
# starts no mkdir and no mv of its own, two of the few processes a job costs besides its own.
# Only once it leads its session (its pid is the job's process group from here on) and where
# /proc tells its start time; else (0) the wrapper takes the steps itself. A failure ends it
# as the wrapper would end. The pid is out a few milliseconds before the wrapper's shell sets
# its trap: a kill in between ends the job without an exit record (seen as vanished, not as
# killed), as one between the sh wrapper's own pid and trap would.
sub record_wrapper {
    my $start = started_at($$);
    return 0 if $start eq '';
    mkdir("$jd/claimed") or exit 0;    # another wrapper owns the job: leave at once
    my $boot = kernel_boot_id();
    write_file("$jd/start", "$start\n");
    write_file("$jd/boot_id", "$boot\n") if $boot ne '';
    # Without a recorded pid the job could neither be watched nor killed: do not run it.
    exit 1 unless write_file("$jd/pid.tmp", "$$\n") && rename("$jd/pid.tmp", "$jd/pid");
    return 1;
}

# setsid(2) without loading POSIX (which costs a perl ten milliseconds and more): the system
# call by its number, only where the number is known for sure (a 64-bit perl on a 64-bit
# kernel of these architectures), and only believed when this process then leads its own
# process group. Anywhere else the setsid program does it (one exec more).
my %setsid_call = (x86_64 => 112, aarch64 => 157, riscv64 => 157);

sub new_session {
    my $number = $setsid_call{ kernel_arch() };
    return 0 unless defined $number && length(pack 'p', 'x') == 8;
    return syscall($number) == $$ && getpgrp(0) == $$;
}

# `uname -s | tr -d ' '`, from the kernel's own file where there is one.
sub os_name {
    my $os = -r '/proc/sys/kernel/ostype' ? first_line('/proc/sys/kernel/ostype') : '';
    $os = `uname -s 2>/dev/null` if $os eq '';
    $os = '' unless defined $os;
    $os =~ tr/ \n//d;
    return $os;
}

# A submit that stopped for any other reason (a perl error): said like a refusal.
sub unexpected {
    my ($error) = @_;
    return if $error =~ /\A(?:refused|ended)\n\z/;
    chomp $error;
    my $message = "the submit of $jd stopped unexpectedly ($error)";
    if ($key eq '-') {
        print "$submit_tag submit error=io\n$message\n";
        exit 0;
    }
    print "$submit_tag submit key=$key error=io len=" . (length($message) + 1) . "\n$message\n";
}

sub read_exactly {
    my ($length) = @_;
    my $data = '';
    while (length($data) < $length) {
        my $got = read DATA, $data, $length - length($data), length($data);
        die "the submit records were cut short\n" unless $got;
    }
    return $data;
}

sub submit_one {
    my ($wait, $files) = @_;
    ($job_created, $launched) = ('', 0);
    my $claimed = begin();
    unless ($claimed) {
        put(@$_) for @$files, [ 'run.sh', $wrapper_text ];
        launch_wrapper();
    }
    # Looks every 10 ms (no process started for it): the answer, and the session, end as soon
    # as the pid is there.
    for (1 .. ($wait ? 500 : 0)) {
        last if -s "$jd/pid" || -f "$jd/exit_code";
        select undef, undef, undef, 0.01;
    }
    $submit_os = os_name() unless defined $submit_os;
    if ($key eq '-') {
        print "$submit_tag submit os=$submit_os launched=$launched\n";
    } else {
        push @answered, "$submit_tag submit key=$key os=$submit_os launched=$launched len=0\n";
    }
}

# Everything a submit creates is the SSH user's alone (the sh form's `umask 077`); the polls
# that follow write with the session's own umask, as they do in sh.
my $session_umask = umask 077;
my ($submit, @files);
while (defined(my $line = <DATA>)) {
    chomp $line;
    if ($line =~ /\Awrapper (\d+)\z/) {
        $wrapper_text = read_exactly($1);
    } elsif ($line =~ /\Afile ([\w.]+) (\d+)\z/) {
        push @files, [ $1, read_exactly($2) ];
    } elsif ($line =~ /\A(?:submit|polls)\b/) {
        if ($submit) {
            ($key, my $wait, $tok, my $id, $base) = @$submit;
            $jd = "$base/$id";
            unexpected($@) unless eval { submit_one($wait, [@files]); 1 };
            chdir '/';
        }
        last if $line eq 'polls';
        $submit = [ split /\t/, substr($line, 7), 5 ];
        @files = ();
    }
}
umask $session_umask;
print @answered;
