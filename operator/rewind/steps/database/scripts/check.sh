# shellcheck shell=sh
# Reads the backup, changes nothing. Exit codes (the step's reasons): 10 BackupNotFound,
# 11 BackupEmpty, 12 BackupCorrupt; any other is BackupCheckFailed.
# A custom-format archive is read with `pg_restore --list`; a plain-SQL dump (`pg_dump > x.sql`)
# is known by pg_dump's header. Either way the tables it creates are listed, names only, so the
# operator can compare them with the live database's (a dump of another database with the same
# name must not pass). The kubelet keeps 4 KiB of the termination message, hence the limits: the
# manifest at most 2 KiB, the names at most 800 bytes (their count and SHA-256 cover the rest).
[ -e "$DUMP_PATH" ] || fail 10 "backup file not found: $DUMP_REF"
[ -s "$DUMP_PATH" ] || fail 11 "backup file is empty (0 bytes): $DUMP_REF"
# The whole file's SHA-256 is read beside the table of contents (one core each).
sha256sum "$DUMP_PATH" > /tmp/sum &
hashing=$!
if pg_restore --list "$DUMP_PATH" > /tmp/toc 2> /tmp/err; then
  format=custom
  db=$(sed -n 's/^;[[:space:]]*dbname: //p' /tmp/toc | head -n 1)
  # "215; 1259 16388 TABLE public appointments owner": the name is what lies between schema and owner.
  awk '$4 == "TABLE" && $5 != "DATA" { n = $6; for (i = 7; i < NF; i++) n = n " " $i; print $5 "." n }' /tmp/toc > /tmp/names
elif head -n 5 "$DUMP_PATH" | grep -q -x -e '-- PostgreSQL database dump'; then
  format=plain
  db=""
  # CREATE TABLE lines outside the data (COPY ... FROM stdin; up to \.), quotes dropped.
  awk '/^COPY .* FROM stdin;$/ { data = 1; next }
       data { if ($0 == "\\.") data = 0; next }
       /^CREATE (UNLOGGED )?TABLE / { sub(/^CREATE (UNLOGGED )?TABLE /, ""); sub(/ \($/, ""); sub(/ PARTITION OF .*/, ""); gsub(/"/, ""); print }' \
    "$DUMP_PATH" > /tmp/names
else
  fail 12 "not a readable pg_dump custom-format archive or plain-SQL dump: $DUMP_REF: $(errors head -c 300)"
fi
# Names only, in one alphabet the operator uses too (anything else becomes ?), sorted bytewise.
tr -c 'A-Za-z0-9_.$ \n-' '?' < /tmp/names | LC_ALL=C sort -u > /tmp/tables
count=$(wc -l < /tmp/tables | tr -d ' ')
tables_sum=$(sha256sum < /tmp/tables | cut -d ' ' -f 1)
names=$(awk '{ if (length(s) + length($0) + 1 > 800) exit; s = s (NR > 1 ? "," : "") $0 } END { print s }' /tmp/tables)
wait "$hashing" || fail 12 "the backup file could not be read whole: $DUMP_REF"
sum=$(cut -d ' ' -f 1 /tmp/sum)
size=$(wc -c < "$DUMP_PATH" | tr -d ' ')
manifest=""
if [ -f "$DUMP_PATH.manifest.json" ]; then
  [ "$(wc -c < "$DUMP_PATH.manifest.json")" -le 2048 ] || fail 13 "the backup's manifest is larger than 2 KiB: $DUMP_REF.manifest.json"
  manifest=$(base64 < "$DUMP_PATH.manifest.json" | tr -d '\n')
fi
printf '{"format":"%s","dbname":"%s","sha256":"%s","bytes":%s,"tables":{"count":%s,"sha256":"%s","names":"%s"},"manifest":"%s"}' \
  "$format" "$db" "$sum" "$size" "$count" "$tables_sum" "$names" "$manifest" > /dev/termination-log
