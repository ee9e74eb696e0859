"""The one exception type for user mistakes.

Anything a user can fix (a bad path, a typo in a config, a checkpoint that does not fit) is raised
as :class:`UserError` with a one-line message saying what is wrong, where, and how to fix it. The
CLI prints that line and exits non-zero; the traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import re

#: How torch's ``ExceptionWrapper.reraise`` rebuilds an exception raised in a DataLoader worker (or a
#: pin-memory thread): ``Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...``,
#: the worker's whole traceback, ending with ``<module>.<Type>: <the original message>``.
_WRAPPED = re.compile(r"^Caught (\w+) (in .*?)\.\nOriginal Traceback \(most recent call last\):\n", re.S)


def unwrap_worker_message(message: str) -> str:
    """The original one-line message of an exception that torch re-raised from a DataLoader worker.

    ``message`` is returned unchanged when it is not such a wrapper. The original message is the last
    line of the worker's traceback, after ``<module>.<Type>: `` (or ``<Type>: `` for builtins).
    """
    found = _WRAPPED.match(message)
    if not found:
        return message
    exc_name = found.group(1)
    lines = [line for line in message.rstrip().splitlines() if line.strip()]
    for line in reversed(lines):
        head, sep, rest = line.partition(": ")
        if sep and (head == exc_name or head.endswith("." + exc_name)):
            return rest.strip()
    return lines[-1].strip() if lines else message


class UserError(Exception):
    """A mistake the user can fix; its message is a single line: what, where, how to fix.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``UserError(<"Caught
    UserError in DataLoader worker process 0" + the worker's traceback>)``; the constructor recognises
    that wrapper and keeps only the original line, so a data error met by a worker is still one line.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (unwrap_worker_message(args[0]),)
        super().__init__(*args)
