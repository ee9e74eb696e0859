"""The one exception type for user mistakes.

Anything a user can fix (a bad path, a typo in a config, a checkpoint that does not fit) is raised
as :class:`UserError` with a one-line message saying what is wrong, where, and how to fix it. The
CLI prints that line and exits non-zero; the traceback is shown only with ``--debug``.
"""


class UserError(Exception):
    """A mistake the user can fix; its message is a single line: what, where, how to fix."""
