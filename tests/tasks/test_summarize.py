"""Extractive summaries (MMR over CLIP text embeddings) and the caption properties."""
import numpy as np

from mapcap.tasks.models import encode_texts
from mapcap.tasks.metrics.summaries import class_properties, diversity, mentions, mmr_summary


def _emb(lm, texts):
    return encode_texts(lm, texts).numpy()


def test_mmr_starts_at_the_centroid_and_skips_duplicates(toy_model):
    texts = ["a red circle"] * 5 + ["a blue circle"] * 3 + ["a red circle"] + ["a green star"]
    summary = mmr_summary(texts, _emb(toy_model, texts), k=3)
    assert summary[0] == "a red circle"  # the most frequent caption is closest to the weighted centroid
    assert set(summary) == {"a red circle", "a blue circle", "a green star"}
    assert mmr_summary(texts, _emb(toy_model, texts), k=10) == summary  # only 3 distinct captions exist
    assert mmr_summary([], np.zeros((0, 4)), k=3) == []


def test_mmr_lambda_trades_relevance_for_diversity(toy_model):
    texts = ["a red circle", "a red circle", "a blue circle", "a green circle", "a purple hexagon"]
    emb = _emb(toy_model, texts)
    relevant = mmr_summary(texts, emb, k=2, lam=1.0)
    diverse = mmr_summary(texts, emb, k=2, lam=0.0)
    assert relevant[0] == diverse[0] == "a red circle"
    assert diverse[1] == "a purple hexagon" != relevant[1]


def test_mentions_whole_words_and_plurals():
    assert mentions("two red circles", ("circle",)) and mentions("A Star.", ("star",))
    assert not mentions("a starfish", ("star",)) and not mentions("", ("star",))


def test_properties_of_a_class_whose_captions_name_another(toy_model):
    texts = ["a red circle", "a blue star", "a red circle and a blue star", "a yellow circle"]
    emb = _emb(toy_model, texts)
    cls = _emb(toy_model, ["a photo of a circle."])[0]
    props = class_properties("circle", ("circle", "star"), texts, emb, cls, [1.0, 2.0, 1.5, 1.5], {})
    assert props["n_captions"] == 4 and props["n_distinct"] == 4
    assert props["class_mention_share"] == 0.75 and props["other_class_share"] == 0.25
    assert props["mean_clipscore"] == 1.5 and 0 < props["diversity"] < 1
    syn = class_properties("circle", ("circle", "star"), texts, emb, cls, [1.0] * 4, {"star": ("blue",)})
    assert syn["other_class_share"] == 0.25  # 'blue' now names star, but captions naming circle don't count
    assert diversity(emb[:1]) == 0.0 and abs(diversity(np.stack([emb[0], emb[0]]))) < 1e-6
