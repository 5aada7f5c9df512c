import pytest

from mapcap.tasks.templates import TEMPLATE_SETS, resolve_templates


def test_named_sets():
    assert len(resolve_templates("openai")) == 80
    assert "No {}, no score." in resolve_templates("compare")
    assert all(t.count("{}") == 1 for s in TEMPLATE_SETS.values() for t in s)


def test_user_lists_are_validated_and_deduplicated():
    assert resolve_templates(["a {}", "a {}", "the {}"]) == ("a {}", "the {}")
    assert resolve_templates("itap of a {}") == ("itap of a {}",)
    with pytest.raises(ValueError, match="neither a named set"):
        resolve_templates("fancy")
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(["{} and {}"])
    with pytest.raises(ValueError, match="empty"):
        resolve_templates([])
