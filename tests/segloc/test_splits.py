import pytest

from segloc.errors import UserError
from segloc.splits import labeled_subset


def test_subset_is_seeded_sorted_and_nested():
    ids = list(range(100, 200))
    small = labeled_subset(ids, 0.1, seed=3)
    large = labeled_subset(reversed(ids), 0.5, seed=3)
    assert len(small) == 10 and len(large) == 50
    assert small == sorted(small)
    assert set(small) <= set(large)  # nested: a fraction sweep changes one thing
    assert labeled_subset(ids, 0.1, seed=3) == small
    assert labeled_subset(ids, 0.1, seed=4) != small
    assert labeled_subset(ids, 1.0, seed=0) == ids
    assert labeled_subset([7], 0.01, seed=0) == [7]  # at least one image


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_subset_rejects_bad_fraction(fraction):
    with pytest.raises(UserError, match="data.label_fraction"):
        labeled_subset([1, 2], fraction, seed=0)
