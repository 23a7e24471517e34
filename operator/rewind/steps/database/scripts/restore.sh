# shellcheck shell=sh
# The Secret's URL names the live database; the restore goes to the staging database on the
# same server, so the script swaps the URL's path (keeping any ?query) without ever printing it.
#
# Both kinds of backup are restored by psql, in one transaction that commits only once the whole
# backup went through, stopping at the first error, objects owned as in the backup:
# - a pg_dump archive (custom format, "PGDMP"): pg_restore turns it into SQL wrapped in
#   BEGIN/COMMIT; the COMMIT comes last, so an archive that breaks mid-way never commits;
# - plain SQL (`pg_dump > file.sql`): it must end with pg_dump's own last line (a cut-off file
#   would restore cleanly and lose the rest); pg_dump wraps each block of large objects in its own
#   BEGIN/COMMIT, which would end the one transaction early, so those two lines are left out.
# psql reports errors by SQLSTATE only (VERBOSITY=sqlstate): a server's message can quote row
# values, and the termination message goes into status.
#
# Exit codes: 30 the archive could not be read (BackupCorrupt, since this is where a damaged
# archive shows: the check's `pg_restore --list` does not read it in full); 31 the SQL failed;
# 32 the backup's source database was created otherwise than the live one (SourceDiffers);
# 33 plain SQL that is not a whole pg_dump script (BackupCorrupt).
base="${DATABASE_URL%%\?*}"; query=""
case "$DATABASE_URL" in *\?*) query="?${DATABASE_URL#*\?}";; esac
target="${base%/*}/${TARGET_DB}${query}"

# What the backup's source database was created with (an archive's DATABASE entry), in the
# operator's words: "encoding=UTF8 provider=icu collate=C.UTF-8 ctype=C.UTF-8 locale=de-DE".
source_creation() {
  # With --create and an empty list, pg_restore writes the database's own entries and no object.
  : > /tmp/no-objects
  line=$(pg_restore --create --use-list=/tmp/no-objects --file=- "$DUMP_PATH" 2> /dev/null | grep -E '^CREATE DATABASE ' | head -n 1)
  [ -n "$line" ] || return 0
  word() { printf '%s' "$line" | sed -n "s/.* $1 = '\([^']*\)'.*/\1/p"; }
  encoding=$(word ENCODING); locale=$(word LOCALE); collate=$(word LC_COLLATE); ctype=$(word LC_CTYPE)
  icu=$(word ICU_LOCALE)
  provider=$(printf '%s' "$line" | sed -n 's/.* LOCALE_PROVIDER = \([a-z]*\).*/\1/p')
  [ -n "$icu" ] || icu=$(word BUILTIN_LOCALE)
  printf 'encoding=%s provider=%s collate=%s ctype=%s locale=%s' "$encoding" "${provider:-libc}" \
    "${collate:-$locale}" "${ctype:-$locale}" "$icu"
}

# Only the SQLSTATE of psql's first error, or a fixed sentence: never a server's message.
sql_failure() {
  code=$(grep -o -E 'ERROR:  [0-9A-Z]{5}' /tmp/psql.err | head -n 1 | cut -c 9-)
  if [ -n "$code" ]; then
    line=$(grep -o -E '^psql:[^:]*:[0-9]+: ERROR' /tmp/psql.err | head -n 1 | cut -d : -f 3)
    printf 'the restore into %s stopped at SQLSTATE %s (line %s of the SQL); nothing of it was committed' "$TARGET_DB" "$code" "$line"
  else
    printf 'psql could not restore into %s (exit code %s); nothing of it was committed' "$TARGET_DB" "$1"
  fi
}

psql_into() {
  psql --no-psqlrc --quiet --no-password --dbname="$target" -v ON_ERROR_STOP=1 -v VERBOSITY=sqlstate "$@" \
    > /dev/null 2> /tmp/psql.err
}

if [ "$(head -c 5 "$DUMP_PATH")" = "PGDMP" ]; then
  found=$(source_creation)
  if [ -n "$found" ] && [ "$found" != "$SOURCE_EXPECT" ] && [ -z "${ACCEPT_SOURCE_DIFFERENCES:-}" ]; then
    fail 32 "the backup's source database was created with $found; the live one with $SOURCE_EXPECT"
  fi
  rc=0
  { pg_restore --single-transaction --file=- "$DUMP_PATH" 2> /tmp/err && echo 0 > /tmp/pg_restore.rc \
      || echo 1 > /tmp/pg_restore.rc; } | psql_into --file=- || rc=$?
  # pg_restore's own errors are about the file; psql's, once pg_restore broke off, are their echo.
  if [ "$(cat /tmp/pg_restore.rc)" != 0 ] && [ -n "$(errors head -c 1)" ]; then
    fail 30 "pg_restore into $TARGET_DB failed: $(errors tail -c 600)"
  fi
  [ "$rc" = 0 ] || fail 31 "$(sql_failure "$rc")"
  [ "$(cat /tmp/pg_restore.rc)" = 0 ] || fail 30 "pg_restore into $TARGET_DB failed"
else
  tail -c 4096 "$DUMP_PATH" | grep -q -E '^-- PostgreSQL database dump complete' \
    || fail 33 "$DUMP_REF is neither a pg_dump archive nor a whole pg_dump SQL script (its last line is missing)"
  rc=0
  awk '/^-- Data for Name: .*; Type: BLOBS;/ { blobs = 1 }
       blobs && /^BEGIN;$/ { next }
       blobs && /^COMMIT;$/ { blobs = 0; next }
       { print }' "$DUMP_PATH" | psql_into --single-transaction --file=- || rc=$?
  [ "$rc" = 0 ] || fail 31 "$(sql_failure "$rc")"
fi
printf '{"restored":"%s"}' "$TARGET_DB" > /dev/termination-log
