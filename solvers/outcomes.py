"""What a check of `solvers.testing` returns or raises: an Outcome, CheckFailed (an AssertionError), the table."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

STATUSES = ("pass", "FAIL", "n/a")


@dataclass(frozen=True)
class Outcome:
    """One check of one solver (on one model/schedule, or aggregated): status, a one-line detail, the table."""

    solver: str
    check: str
    status: str  # "pass", "FAIL" or "n/a"
    detail: str
    table: str = ""
    where: str = ""  # model/schedule
    value: float = math.nan  # the headline number (order, largest difference), for aggregation
    data: dict = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        head = f"{self.solver} {self.check}{f' ({self.where})' if self.where else ''}: {self.status}, {self.detail}"
        return head + (f"\n{self.table}" if self.table else "")


class CheckFailed(AssertionError):
    """A failed check; `outcomes` are every outcome of the call (failed or not), the message their table."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        failed = [o for o in self.outcomes if o.status == "FAIL"]
        super().__init__("\n".join([format_table(self.outcomes), *(str(o) for o in failed if o.table)]))

    @property
    def outcome(self) -> Outcome:
        """The first failed outcome."""
        return next(o for o in self.outcomes if o.status == "FAIL")


def format_table(outcomes) -> str:
    """One row per outcome: solver, check, status, detail."""
    rows = [("solver", "check", "status", "detail")] + [(o.solver, o.check, o.status, o.detail) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


def _done(outcome: Outcome) -> Outcome:
    if outcome.status == "FAIL":
        raise CheckFailed([outcome])
    return outcome


def done(outcome: Outcome) -> Outcome:
    """The outcome, or CheckFailed if it failed."""
    if outcome.status == "FAIL":
        raise CheckFailed([outcome])
    return outcome


def problem(e: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:100]}" if str(e) else type(e).__name__
