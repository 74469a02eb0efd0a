# The polls of a batch in ONE perl process: for every job what sh/lib.sh's q, z and w do, with
# the same answer, the same checks and the same order of probes (liveness before exit code
# before log size), but without starting a process per job. Only perl's builtins are used, no
# module, so that a host with nothing but perl-base runs it. The batch script pipes it in on
# standard input (never as a here-document: no temporary file, so a full /tmp cannot stop it);
# the entries follow __END__, one per line:
#   KEY <tab> OFFSET <tab> MAX <tab> DELIVERED <tab> TOKEN <tab> DIR
# Arguments: the answers' tag and the kernel boot id (process.sh's $boot_now, may be empty;
# read here when not given).
my ($tag, $boot_now) = @ARGV;
$boot_now = kernel_boot_id() unless defined $boot_now;
binmode STDOUT;
my $out = '';

# What `read -r v < FILE` gives: the first line, surrounding blanks (spaces and tabs, the
# shell's IFS; never a carriage return) removed ('' if unreadable).
sub first_line {
    my ($path) = @_;
    open(my $fh, '<', $path) or return '';
    # A bounded read: a control file the job filled with one huge line must not stall the batch.
    my $line = '';
    read $fh, $line, 4096;
    close $fh;
    $line =~ s/\n.*//s;
    $line =~ s/\A[ \t]+//;
    $line =~ s/[ \t]+\z//;
    return $line;
}

sub file_line { return -f $_[0] ? first_line($_[0]) : '' }

# process.sh's boot_now: the kernel's boot id ('' where there is none to read).
sub kernel_boot_id {
    my $path = '/proc/sys/kernel/random/boot_id';
    return -r $path ? first_line($path) : '';
}

# process.sh's proc_stat: the fields of /proc/PID/stat after the command name (the state
# letter first), none without /proc.
sub proc_stat {
    my ($pid) = @_;
    return () unless -r "/proc/$pid/stat";
    my $stat = first_line("/proc/$pid/stat");
    $stat =~ s/.*\) //s;    # the command name may hold spaces: the fields follow the last ") "
    return split ' ', $stat;
}

# process.sh's started_at: the start time in clock ticks (field 22 of /proc/PID/stat).
sub started_at {
    my @fields = proc_stat($_[0]);
    return defined $fields[19] ? $fields[19] : '';
}

# process.sh's has_exited: PID has exited and waits to be reaped (a zombie).
sub has_exited {
    my @fields = proc_stat($_[0]);
    return @fields && $fields[0] =~ /\A[ZX]\z/ ? 1 : 0;
}

# process.sh's ps_started: what `ps -o lstart=` says, its words re-joined (no /proc).
sub ps_started {
    my ($pid) = @_;
    my $text = `ps -o lstart= -p $pid 2>/dev/null`;
    return join ' ', split ' ', (defined $text ? $text : '');
}

# lib.sh's is_wrapper: PID is alive and is the wrapper that recorded ./start.
sub is_wrapper {
    my ($pid) = @_;
    return 0 if $pid eq '' || $pid =~ /[^0-9]/ || $pid eq '0' || $pid eq '1';
    # No pid is larger than 2^31 - 1: a longer number would wrap in kill (to kill -1).
    return 0 if length($pid) > 10 || $pid > 2147483647;
    return 0 unless kill 0, $pid;
    return 0 if $boot_now ne '' && -f 'boot_id' && first_line('boot_id') ne $boot_now;
    return 1 unless -f 'start';
    my $record = first_line('start');
    return 1 if $record eq '';
    return ('ps:' . ps_started($pid)) eq $record if $record =~ /\Aps:/;
    return started_at($pid) eq $record;
}

# process.sh's fs_full: no space left for us on the file system of the current directory.
sub fs_full {
    my @lines = `df -P -k . 2>/dev/null`;
    return 0 if @lines < 2;
    my @fields = split ' ', $lines[1];
    for my $i (1 .. $#fields) {
        return $fields[ $i - 1 ] eq '0' ? 1 : 0 if $fields[$i] =~ /%\z/;
    }
    return 0;
}

# lib.sh's owned_by_job DIR "": a directory (not a link to one) of the SSH user's.
sub owned_by_us {
    my @stat = lstat $_[0];
    return @stat && -d _ && $stat[4] == $>;
}

# lib.sh's ended_of DIR TOKEN: the exit code recorded for DIR once it was removed ('' when it
# has none), or undef without a record carrying TOKEN in a private records directory of ours.
sub ended_of {
    my ($dir, $token) = @_;
    my ($base, $id) = $dir =~ m{\A(.*)/([^/]+)\z} or return undef;
    my $records = "$base/.ssh-jobs-ended";
    return undef unless -f "$records/$id";
    my @stat = lstat $records;
    return undef unless @stat && -d _ && ($stat[2] & 077) == 0 && $stat[4] == $>;
    my ($recorded, $code) = split ' ', first_line("$records/$id"), 2;
    return undef unless defined $recorded && $recorded ne '';
    return undef if $token ne '' && $recorded ne $token;
    $code = '' unless defined $code && $code !~ /[^0-9]/;
    return $code;
}

# lib.sh's exit_record: the code, the note (nospace) and the log's size when the job ended,
# from "<code> log=<bytes>[ nospace]" (older wrappers: "<code>[ nospace]").
sub exit_record {
    my ($code, $rest) = split ' ', file_line('exit_code'), 2;
    $code = '' unless defined $code && $code !~ /[^0-9]/;
    my ($note, $log_end) = ('', '');
    for my $word (split ' ', defined $rest ? $rest : '') {
        $note = 'nospace' if $word eq 'nospace';
        if ($word =~ /\Alog=(.*)\z/s) {
            my $value = $1;
            $log_end = $value =~ /\A[0-9]+\z/ ? $value : '';
        }
    }
    return ($code, $note, $log_end);
}

# lib.sh's log_window: exactly $count bytes for the answer announced with len=$count: the log's
# bytes from $offset, and if fewer could be read, blanks for the rest and a "short" line
# saying how many were real.
sub window {
    my ($key, $offset, $count) = @_;
    my $data = '';
    if (open(my $fh, '<', 'stdout.log')) {
        binmode $fh;
        if (seek $fh, $offset, 0) {
            while (length($data) < $count) {
                my $got = read $fh, $data, $count - length($data), length($data);
                last unless $got;
            }
        }
        close $fh;
    }
    my $got = length $data;
    return $data if $got >= $count;
    return $data . (' ' x ($count - $got)) . "$tag short key=$key got=$got len=0\n";
}

sub poll {
    my ($key, $offset, $max, $delivered, $token, $dir) = @_;
    unless (chdir $dir) {
        my $ended = ended_of($dir, $token);
        $out .= defined $ended
          ? "$tag poll key=$key state=ended exit=$ended len=0\n"
          : "$tag poll key=$key state=missing len=0\n";
        return;
    }
    my $ours = $token ne '' ? file_line('token') eq $token : owned_by_us($dir);
    unless ($ours) {
        $out .= "$tag poll key=$key state=foreign len=0\n";
        chdir '/';
        return;
    }
    my $pid = file_line('pid');
    $pid = '' if $pid =~ /[^0-9]/;
    my $alive = $pid ne '' && is_wrapper($pid) && !has_exited($pid) ? 1 : 0;
    my ($code, $note, $log_end) = exit_record();
    my $size = -f 'stdout.log' ? (stat _)[7] : 0;
    my $boot = 'unknown';
    $boot = first_line('boot_id') eq $boot_now ? 'same' : 'changed' if $boot_now ne '' && -f 'boot_id';
    my $claimed = -d 'claimed' ? 1 : 0;
    my $full = !$alive && $pid ne '' && $code eq '' && fs_full() ? 1 : 0;
    my $old = file_line('delivered');
    $old = 0 if $old eq '' || $old =~ /[^0-9]/;
    # Only a plain file (or none) is written: opening a FIFO the job left there would block.
    if ($delivered > $old && (!-e 'delivered' || -f _) && open(my $fh, '>', 'delivered')) {
        print $fh "$delivered\n";
        close $fh;
    }
    my $count = $size > $offset ? $size - $offset : 0;
    $count = $max if $count > $max;
    my $unreadable = '';
    if ($count > 0 && !-r 'stdout.log') {
        ($count, $unreadable) = (0, ' unreadable=1');
    }
    $out .= "$tag poll key=$key pid=$pid alive=$alive exit=$code note=$note logend=$log_end boot=$boot "
      . "claimed=$claimed full=$full size=$size delivered=$old$unreadable len=$count\n";
    $out .= window($key, $offset, $count) if $count > 0;
    chdir '/';
}

while (my $entry = <DATA>) {
    chomp $entry;
    my @fields = split /\t/, $entry, 6;
    next unless @fields == 6 && $fields[0] =~ /\A[0-9]+\z/;
    poll(@fields);
    if (length($out) >= 65536) {
        print $out;
        $out = '';
    }
}
print $out;
exit 0;
