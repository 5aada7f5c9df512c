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


def test_a_folder_names_underscores_are_spaces_in_prompts_and_caption_matches(toy_model):
    """'golden_retriever' is said 'golden retriever' in every prompt (CLIP's tokenizer reads '_' as a token of
    its own) and matched as such in captions (no caption writes the underscore)."""
    import torch

    from mapcap.tasks.concept_bank import class_prompt
    from mapcap.tasks.metrics.summaries import mentions
    from mapcap.tasks.templates import fill
    from mapcap.tasks.zeroshot import text_classifier
    assert fill("a photo of a {}.", "golden_retriever") == "a photo of a golden retriever."
    assert class_prompt("red_star", "five points") == class_prompt("red star", "five points")
    a = text_classifier(toy_model, ("red_star", "blue_ring"), ("a photo of a {}.",))
    b = text_classifier(toy_model, ("red star", "blue ring"), ("a photo of a {}.",))
    assert torch.equal(a, b)
    assert mentions("two golden retrievers on grass", ("golden_retriever",))
    assert not mentions("a golden field", ("golden_retriever",))


def test_class_names_that_are_ids_are_named_with_the_fix(tmp_path, caplog):
    import logging

    from PIL import Image

    from mapcap.tasks.pipeline.plan import plan_run
    from mapcap.tasks.templates import id_like
    assert id_like(("n01440764", "0", "12_3", "tench", "café", "n0144", "t-shirt")) == ["n01440764", "0", "12_3"]
    for cls in ("n01440764", "n01443537"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / cls / "a.png")
    log = logging.getLogger("mapcap.tasks.pipeline.plan")  # Prefect's logging set-up may stop it reaching the root's
    log.addHandler(caplog.handler)
    try:
        plan_run(str(tmp_path / "imgs"), None, "toy", "toy", "simple", None, "cpu", "fp32", None)
        assert "2 of the 2 class names" in caplog.text and "'a photo of a n01440764.'" in caplog.text
        assert "--class-map" in caplog.text
        (tmp_path / "map.json").write_text('{"n01440764": "tench", "n01443537": "goldfish"}')
        caplog.clear()
        plan = plan_run(str(tmp_path / "imgs"), str(tmp_path / "map.json"), "toy", "toy", "simple", None, "cpu",
                        "fp32", None)
        assert "class names" not in caplog.text and plan.classes == ("goldfish", "tench")
    finally:
        log.removeHandler(caplog.handler)
