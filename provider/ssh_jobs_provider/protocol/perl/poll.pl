# The polls of a batch in ONE perl process: for every job what sh/lib.sh's q, z and w do, with
# the same answer, the same checks and the same order of probes (liveness before exit code
# before log size), but without starting a process per job. Only perl's builtins are used, no
# module, so that a host with nothing but perl-base runs it. The batch script feeds it on
# standard input; the entries follow __END__, one per line:
#   KEY <tab> OFFSET <tab> MAX <tab> DELIVERED <tab> TOKEN <tab> DIR
# Arguments: the answers' tag and the kernel boot id (process.sh's $boot_now, may be empty).
my ($tag, $boot_now) = @ARGV;
$boot_now = '' unless defined $boot_now;
binmode STDOUT;
my $out = '';

# What `read -r v < FILE` gives: the first line, surrounding blanks removed ('' if unreadable).
sub first_line {
    my ($path) = @_;
    open(my $fh, '<', $path) or return '';
    my $line = <$fh>;
    close $fh;
    return '' unless defined $line;
    $line =~ s/\A\s+//;
    $line =~ s/\s+\z//;
    return $line;
}

sub file_line { return -f $_[0] ? first_line($_[0]) : '' }

# process.sh's started_at: the start time in clock ticks (field 22 of /proc/PID/stat).
sub started_at {
    my ($pid) = @_;
    return '' unless -r "/proc/$pid/stat";
    my $stat = first_line("/proc/$pid/stat");
    $stat =~ s/.*\) //s;    # the command name may hold spaces: the fields follow the last ") "
    my @fields = split ' ', $stat;
    return defined $fields[19] ? $fields[19] : '';
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

sub window {
    my ($offset, $count) = @_;
    my $data = '';
    open(my $fh, '<', 'stdout.log') or return '';
    binmode $fh;
    if (seek $fh, $offset, 0) {
        while (length($data) < $count) {
            my $got = read $fh, $data, $count - length($data), length($data);
            last unless $got;
        }
    }
    close $fh;
    return $data;
}

sub poll {
    my ($key, $offset, $max, $delivered, $token, $dir) = @_;
    unless (chdir $dir) {
        $out .= "$tag poll key=$key state=missing len=0\n";
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
    my $alive = $pid ne '' && is_wrapper($pid) ? 1 : 0;
    my ($code, $note) = split ' ', file_line('exit_code'), 2;
    $code = '' unless defined $code && $code !~ /[^0-9]/;
    $note = '' unless defined $note && $note eq 'nospace';
    my $size = -f 'stdout.log' ? (stat _)[7] : 0;
    my $boot = 'unknown';
    $boot = first_line('boot_id') eq $boot_now ? 'same' : 'changed' if $boot_now ne '' && -f 'boot_id';
    my $claimed = -d 'claimed' ? 1 : 0;
    my $full = !$alive && $pid ne '' && $code eq '' && fs_full() ? 1 : 0;
    my $old = file_line('delivered');
    $old = 0 if $old eq '' || $old =~ /[^0-9]/;
    if ($delivered > $old && open(my $fh, '>', 'delivered')) {
        print $fh "$delivered\n";
        close $fh;
    }
    my $count = $size > $offset ? $size - $offset : 0;
    $count = $max if $count > $max;
    # The length is what was read: a log cut shorter meanwhile cannot break the framing.
    my $data = $count > 0 ? window($offset, $count) : '';
    $out .= "$tag poll key=$key pid=$pid alive=$alive exit=$code note=$note size=$size boot=$boot "
      . "claimed=$claimed full=$full delivered=$old len=" . length($data) . "\n" . $data;
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
