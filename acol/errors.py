"""The base class of every error a user can fix, so the CLI can tell them from bugs without a list to keep.

Why: a mistake the user can fix (bad params, bad data, unusable weights or maps, a missing input, an
unreachable tracking server) already names the file or key and what is allowed; a traceback in front of
that message hides it. `acol.stages.cli.run_stage` prints such an error as one line and exits 2. A leaf
module: every part of acol may import it, and it imports nothing.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake the user can fix (params, data, weights, a missing input): the CLI prints one line, exits 2.

    Subclasses keep their builtin base too (``class ParamsError(UserError, ValueError)``), so callers that
    catch ``ValueError`` or ``RuntimeError`` still do.
    """
