# shellcheck shell=sh
# The Secret's URL names the live database; the restore goes to the staging database on the
# same server, so the script swaps the URL's path (keeping any ?query) without ever printing it.
# Exit code 30: pg_restore failed. The operator reports it as BackupCorrupt, since this is where a
# damaged archive shows (the check's `pg_restore --list` does not read it in full).
base="${DATABASE_URL%%\?*}"; query=""
case "$DATABASE_URL" in *\?*) query="?${DATABASE_URL#*\?}";; esac
target="${base%/*}/${TARGET_DB}${query}"
pg_restore --single-transaction --exit-on-error --no-owner --no-password --dbname="$target" "$DUMP_PATH" 2> /tmp/err \
  || fail 30 "pg_restore into $TARGET_DB failed: $(errors tail -c 600)"
printf '{"restored":"%s"}' "$TARGET_DB" > /dev/termination-log
