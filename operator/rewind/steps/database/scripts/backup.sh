# shellcheck shell=sh
# The dump is written under a temporary name and moved into place only once it reads back, so a
# file at DUMP_PATH is always a whole dump; a file that is not this rollback's own is never
# overwritten. This rollback's own (marked by DUMP_PATH.rewind-uid, written before the move) is
# adopted: a run whose Job vanished after it finished must not fail the rollback.
# pg_dump waits at most LOCK_WAIT_TIMEOUT for its table locks; exit code 23 says it gave up on one
# (the operator then names who holds it). Exit codes 20-22: refused, pg_dump failed, unreadable.
partial="$DUMP_PATH.partial"
trap 'rm -f "$partial"' EXIT
if [ -e "$DUMP_PATH" ]; then
  [ "$(cat "$DUMP_PATH.rewind-uid" 2> /dev/null)" = "$ROLLBACK_UID" ] \
    || fail 20 "refusing to overwrite an existing file: $DUMP_REF"
else
  mkdir -p "$(dirname "$DUMP_PATH")"
  # COMPRESS: pg_dump's --compress level ("" for its own default), from spec.backupCompression.
  if ! pg_dump --format=custom ${COMPRESS:+--compress="$COMPRESS"} --no-password --lock-wait-timeout="$LOCK_WAIT_TIMEOUT" \
      --dbname="$DATABASE_URL" --file="$partial" 2> /tmp/err; then
    table=$(sed -n 's/^pg_dump: detail: Query was: LOCK TABLE \(.*\) IN ACCESS SHARE MODE$/\1/p' /tmp/err | head -n 1)
    if [ -n "$table" ] && grep -q 'canceling statement due to statement timeout' /tmp/err; then
      fail 23 "pg_dump waited $LOCK_WAIT_TIMEOUT for a lock on table $table and gave up"
    fi
    fail 21 "pg_dump failed: $(errors head -c 500)"
  fi
  pg_restore --list "$partial" > /dev/null 2> /tmp/err || fail 22 "the new dump does not read back: $(errors head -c 300)"
  printf '%s' "$ROLLBACK_UID" > "$DUMP_PATH.rewind-uid"
  mv "$partial" "$DUMP_PATH"
fi
sum=$(sha256sum "$DUMP_PATH" | cut -d ' ' -f 1)
size=$(wc -c < "$DUMP_PATH" | tr -d ' ')
printf '{"sha256":"%s","bytes":%s}' "$sum" "$size" > /dev/termination-log
