"""Database rollback, out of place, so that no moment of it can lose data: the seed's plan
dropped the live database and restored into it, leaving production without a database for the
length of the restore and with nothing to go back to if the dump was bad.

Instead the backup is checked, the live database dumped, the backup restored into a staging
database, verified there, then swapped in under the live name; the old live database is kept.
Production is touched only by the swap, and only once all else has succeeded. Each step is a
module here (check, backup, restore, verify, actions, swap; planning for preflight), and
docs/design/2026-12-01-database-restore.md records the decision and its fence.
"""

from rewind.steps.database.actions import advance_action
from rewind.steps.database.backup import advance_backup
from rewind.steps.database.check import advance_check
from rewind.steps.database.planning import preflight, resolve
from rewind.steps.database.restore import advance_restore
from rewind.steps.database.swap import advance_swap, release_swap
from rewind.steps.database.verify import advance_verify

__all__ = [
    "preflight", "resolve", "advance_check", "advance_backup", "advance_restore", "advance_verify",
    "advance_action", "advance_swap", "release_swap",
]
