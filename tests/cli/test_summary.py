"""The run summary's wording (the figures themselves are tested against a real run in tests/flows)."""
import pytest

from mapcap.cli.summary import duplicates_line


@pytest.mark.parametrize("dups, expected", [
    ({"n_identical": 2, "n_groups": 1, "n_duplicates": 1},
     "2 files are byte-identical to another (1 group, 1 copy beyond the first); each counts as an image of its own"),
    ({"n_identical": 3, "n_groups": 1, "n_duplicates": 2},
     "3 files are byte-identical to another (1 group, 2 copies beyond the first); each counts"),
    ({"n_identical": 5, "n_groups": 2, "n_duplicates": 3},
     "5 files are byte-identical to another (2 groups, 3 copies beyond the first of each); each counts"),
])
def test_duplicates_line_agrees_in_number(dups, expected):
    assert duplicates_line(dups).startswith(expected)
