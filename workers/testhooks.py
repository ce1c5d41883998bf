"""TEST ONLY: fault points the fault-injection tests arm through the environment.

Off unless a ``FERRY_TEST_*`` setting names them; a production worker never has them set.
Kept apart so that nothing else in the engine carries test code.
"""

from __future__ import annotations

import os
import signal


def kill_point(flag: str | None) -> None:
    """FERRY_TEST_KILL_ONCE: the first worker process to get here while the file ``flag``
    exists deletes it and SIGKILLs itself.

    Called after a chunk's data change and its done mark, before their COMMIT
    (tests/integration/test_exactly_once.py). Past finish_chunk rather than before it: a
    commit slipped in anywhere ahead of the done mark then leaves the data change committed
    and the chunk not done, and the test sees the chunk applied twice.
    """
    if flag is None:
        return
    try:
        os.unlink(flag)  # once: of several processes, the one that removes it dies
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
