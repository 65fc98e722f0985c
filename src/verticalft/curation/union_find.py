"""Union-find (disjoint sets) whose root is always a set's smallest member.

Deduplication keeps the smallest id of each cluster of copies and drops the others, naming the one
that stays; with the smallest member as root, `find` answers "which copy stays" directly, whatever
order the pairs were joined in. Near-dup clustering (`near_dedup.near_duplicates` over row
positions, the sharded steps over document ids) joins its verified pairs here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar


class _Ordered(Hashable, Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


T = TypeVar("T", bound=_Ordered)


class UnionFind(Generic[T]):
    """Disjoint sets of hashable, ordered members (ids, row positions); a member is added the first
    time it is named. Path halving keeps `find` near constant time."""

    def __init__(self, members: Iterable[T] = ()) -> None:
        self._parent: dict[T, T] = {m: m for m in members}

    def find(self, x: T) -> T:
        """The smallest member of `x`'s set."""
        parent = self._parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: T, b: T) -> bool:
        """Join the sets of `a` and `b`; False when they were one set already."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if rb < ra:
            ra, rb = rb, ra
        self._parent[rb] = ra  # the smaller root stays the root
        return True

    def components(self) -> dict[T, T]:
        """Every member that is not its set's root → that root (the smallest member), by member."""
        roots = {x: self.find(x) for x in sorted(self._parent)}
        return {x: r for x, r in roots.items() if r != x}


def components(pairs: Iterable[tuple[T, T]]) -> dict[T, T]:
    """The connected components of `pairs` (edges): every member but the smallest → the smallest."""
    sets: UnionFind[T] = UnionFind()
    for a, b in pairs:
        sets.union(a, b)
    return sets.components()
