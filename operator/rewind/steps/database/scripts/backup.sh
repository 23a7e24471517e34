# shellcheck shell=sh
# The dump is written under a temporary name and moved into place only once it reads back, so a
# file at DUMP_PATH is always a whole dump; an existing file is never overwritten.
[ ! -e "$DUMP_PATH" ] || fail 20 "refusing to overwrite an existing file: $DUMP_REF"
mkdir -p "$(dirname "$DUMP_PATH")"
pg_dump --format=custom --no-password --dbname="$DATABASE_URL" --file="$DUMP_PATH.partial" 2> /tmp/err \
  || fail 21 "pg_dump failed: $(errors head -c 500)"
pg_restore --list "$DUMP_PATH.partial" > /dev/null 2> /tmp/err || fail 22 "the new dump does not read back: $(errors head -c 300)"
mv "$DUMP_PATH.partial" "$DUMP_PATH"
sum=$(sha256sum "$DUMP_PATH" | cut -d ' ' -f 1)
size=$(wc -c < "$DUMP_PATH" | tr -d ' ')
printf '{"sha256":"%s","bytes":%s}' "$sum" "$size" > /dev/termination-log
