"""How many bytes of registries' bodies (manifests, tag lists, indexes) the node holds in
memory at once: a budget, taken as the bytes arrive and given back when the request is done
with them. A pure policy.

Why: each of the 200 registry connections could hold a body of up to 4 MiB while it trickled
in, and a manifest waited for its parse holding its body (a helper's probe, 2026-12-04: one
client's requests at a registry it runs took the node to 0.9-1.4 GB, past the DaemonSet's
1 GiB limit). With the budget spent, a read is refused at once (503, try again), so what a
client can make the node hold is the budget, not the connections times the largest body.

The registries clients name (`?ns=` that no --upstream maps) share at most `named_share` of
it: however many such reads one client holds open, the configured registries' keep the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST_BODIES = 64 * 1024 * 1024  # manifests being read, parsed and stored
LIST_BODIES = 16 * 1024 * 1024  # tag lists and referrers indexes being read and answered


class BudgetSpent(Exception):
    """The bytes would take the budget past its bound (or the named registries' share)."""


@dataclass
class BodyBudget:
    """Bytes held, in all and for registries clients name; bounded by `total` and
    `named_share`."""

    total: int
    named_share: int
    held: int = 0
    held_for_named: int = 0

    def take(self, size: int, named: bool) -> None:
        """Hold `size` more bytes.

        Raises:
            BudgetSpent: past `total`, or past `named_share` for a `named` registry's body.
        """
        if self.held + size > self.total:
            raise BudgetSpent(
                f"the node holds {self.held} bytes of registry bodies already "
                f"(at most {self.total})"
            )
        if named and self.held_for_named + size > self.named_share:
            raise BudgetSpent(
                f"the node holds {self.held_for_named} bytes of bodies from registries "
                f"clients name already (at most {self.named_share})"
            )
        self.held += size
        if named:
            self.held_for_named += size

    def give_back(self, size: int, named: bool) -> None:
        self.held -= size
        if named:
            self.held_for_named -= size


class BodyHold:
    """The bytes one request holds of a budget, grown as a body arrives; `release` (or the
    end of a `with`) gives them all back."""

    def __init__(self, budget: BodyBudget, named: bool) -> None:
        self.budget = budget
        self.named = named
        self.size = 0

    def grow(self, size: int) -> None:
        """Raises:
        BudgetSpent: as `BodyBudget.take`; the hold keeps what it had."""
        self.budget.take(size, self.named)
        self.size += size

    def release(self) -> None:
        self.budget.give_back(self.size, self.named)
        self.size = 0

    def __enter__(self) -> BodyHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
