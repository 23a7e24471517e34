# shellcheck shell=sh
# Sent before each of check.sh, backup.sh and restore.sh: the Job runs `sh -c` on the two together.

# pg_dump/pg_restore print DETAIL and CONTEXT lines that can carry row values; only their own
# "pg_restore: error: ..." lines go into the termination message (and from there into status).
errors() { grep -E '^pg_(dump|restore): (error|warning|detail)?' /tmp/err | grep -v -E '^pg_(dump|restore): detail:' | "$@"; }
# The termination message is all the operator reads of a Job: its result, or why it failed. The
# exit code tells the operator which failure it was.
fail() { printf '%s' "$2" > /dev/termination-log; exit "$1"; }
set -eu
