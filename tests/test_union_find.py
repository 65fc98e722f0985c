"""The one union-find (near-dup clusters, in memory and sharded): hand-built pairs give the
components drawn by hand, each rooted at its smallest member, whatever the order of the pairs."""

import random

from verticalft.curation.union_find import UnionFind, components

# Drawn by hand: {1, 2, 4, 10}, {3, 5, 9}, {7} (a self-pair), {6} (named, never joined).
PAIRS = [(5, 3), (3, 9), (10, 4), (1, 2), (7, 7), (4, 2), (9, 5)]
EXPECTED = {2: 1, 4: 1, 10: 1, 5: 3, 9: 3}


def test_hand_built_pairs_give_components_rooted_at_their_smallest_member():
    sets: UnionFind[int] = UnionFind([6])
    joined = [sets.union(a, b) for a, b in PAIRS]
    assert joined == [True, True, True, True, False, True, False]  # (7, 7), (9, 5): one set already
    assert sets.components() == EXPECTED
    assert [sets.find(x) for x in (1, 2, 3, 4, 5, 6, 7, 9, 10)] == [1, 1, 3, 1, 3, 6, 7, 3, 1]
    assert components(PAIRS) == EXPECTED


def test_the_order_of_the_pairs_does_not_matter():
    for seed in range(20):
        rng = random.Random(seed)
        pairs = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in PAIRS]
        rng.shuffle(pairs)
        assert components(pairs) == EXPECTED


def test_a_chain_joined_from_its_largest_end_roots_at_its_smallest():
    # Each union joins a new, smaller member to the set: the root must move down every time.
    assert components((i + 1, i) for i in reversed(range(50))) == {i: 0 for i in range(1, 51)}


def test_ids_are_ordered_as_strings():
    # Document ids compare as strings: "doc-10" < "doc-9", so "doc-10" is the copy that stays.
    assert components([("doc-9", "doc-10"), ("doc-9", "doc-11")]) == {"doc-11": "doc-10", "doc-9": "doc-10"}
    assert components([]) == {}
