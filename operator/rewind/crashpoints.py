"""Named crash points, for the test suite's crash matrix only.

`reach(name)` does nothing unless the operator was started with REWIND_CRASH_AT naming that point
(a comma-separated list; `Kind:boundary` or `Kind:boundary@N` for the Nth time it is reached).
Then the process SIGKILLs itself there, exactly as a node failure would stop it: no cleanup, no
last write. Production never sets the variable; the points cost a dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

_armed: dict[str, int] = {}
for _item in filter(None, (os.environ.get("REWIND_CRASH_AT") or "").split(",")):
    _point, _, _nth = _item.strip().partition("@")
    _armed[_point] = int(_nth or 1)
_seen: dict[str, int] = {}


def reach(name: str) -> None:
    if name not in _armed:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _armed[name]:
        log.warning("crash point %s reached: SIGKILL", name)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)
