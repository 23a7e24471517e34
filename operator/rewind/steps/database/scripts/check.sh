# shellcheck shell=sh
# Reads the backup, changes nothing. Exit codes (the step's reasons): 10 BackupNotFound,
# 11 BackupEmpty, 12 BackupCorrupt; any other is BackupCheckFailed. The kubelet keeps 4 KiB of the
# termination message, hence the 2 KiB limit on the manifest that travels in it.
[ -e "$DUMP_PATH" ] || fail 10 "backup file not found: $DUMP_REF"
[ -s "$DUMP_PATH" ] || fail 11 "backup file is empty (0 bytes): $DUMP_REF"
pg_restore --list "$DUMP_PATH" > /tmp/toc 2> /tmp/err || fail 12 "not a readable pg_dump custom-format archive: $DUMP_REF: $(errors head -c 300)"
db=$(sed -n 's/^;[[:space:]]*dbname: //p' /tmp/toc | head -n 1)
sum=$(sha256sum "$DUMP_PATH" | cut -d ' ' -f 1)
size=$(wc -c < "$DUMP_PATH" | tr -d ' ')
manifest=""
if [ -f "$DUMP_PATH.manifest.json" ]; then
  [ "$(wc -c < "$DUMP_PATH.manifest.json")" -le 2048 ] || fail 13 "the backup's manifest is larger than 2 KiB: $DUMP_REF.manifest.json"
  manifest=$(base64 < "$DUMP_PATH.manifest.json" | tr -d '\n')
fi
printf '{"dbname":"%s","sha256":"%s","bytes":%s,"manifest":"%s"}' "$db" "$sum" "$size" "$manifest" > /dev/termination-log
