# The "#!" line of a command, read as Linux reads it, so that the wrapper starts the interpreter
# itself instead of asking the kernel to execute command.sh: the job directory's file system
# may be mounted noexec (often /tmp), where executing a file fails but reading it does not.
# Builtins only: the interpreter is the one process the wrapper starts for the command.

# shebang_of LINE: sb_interp = the interpreter that LINE (a first line, "#!" included) names,
# sb_arg = its one optional argument, as the kernel would pass them: the interpreter as
# written (a relative one from the working directory, never looked up in PATH), then
# everything after it up to the end of the line, blanks around it dropped, as ONE argument if
# anything is left. Unlike the kernel, which looks at the file's first 256 bytes only (128
# before Linux 5.1), this reads the whole line. Fails, saying why on stderr, for a line that would only fail later, obscurely.
shebang_of() {
  sb_line=${1#??}
  # Blanks are spaces and tabs, the only ones the kernel skips (the tab is written literally).
  sb_line=${sb_line#"${sb_line%%[!	 ]*}"}
  sb_line=${sb_line%"${sb_line##*[!	 ]}"}
  sb_interp=${sb_line%%[	 ]*}
  sb_arg=${sb_line#"$sb_interp"}
  sb_arg=${sb_arg#"${sb_arg%%[!	 ]*}"}
  case $sb_line in
    '')
      # A "#!" naming no interpreter: the kernel refuses it, and a shell that asked it to
      # execute the file then runs the file itself, with /bin/sh.
      sb_interp=/bin/sh
      ;;
    *[[:cntrl:]])
      # Windows line endings leave a carriage return at the end of the line, which the
      # kernel would take as part of the interpreter's name (or of its argument).
      echo "ssh-jobs: the #! line of the command ends with a control character (a carriage return: Windows line endings?); write the command with Unix line endings" >&2
      return 1
      ;;
    /*) ;;
    *) sb_interp=./$sb_interp ;;
  esac
}
