"""The general phrase bank: what the retrieval captioner names regions with when a CLIP other than a preset runs
without a phrase bank of the user's own (before it, `mapcap run ~/photos --model ViT-B-16 --pretrained openai`
skipped captions, and with them the per-class summaries).

Its phrases: ImageNet's 1,000 object names (open_clip ships them), what a region may be that is no object
(materials, surfaces, scenery, parts of bodies and things, text), and the run's own class names, so a region can
be named as its class. Each with its article ("a Labrador Retriever"). The words change the captions: bump the
captions stage's version with them, so that no run reuses captions of another list.
"""
from __future__ import annotations

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from mapcap.tasks.articles import with_article

GENERAL = "general"  # the `captions.phrase_bank` value that names this bank

# regions that are no object: stuff, surfaces, scenery, parts (said as a caption would: mass nouns bare)
STUFF = (
    "sky", "clouds", "a blue sky", "a sunset", "the sun", "the moon", "stars at night", "fog", "rain", "snow", "ice",
    "water", "the sea", "waves", "a lake", "a river", "a waterfall", "a beach", "sand", "rocks", "a stone", "mud",
    "dirt", "gravel", "grass", "a lawn", "a field", "leaves", "a tree", "a tree trunk", "branches", "bushes", "a forest",
    "flowers", "a flower", "moss", "a mountain", "a hill", "a cliff", "a road", "a street", "a sidewalk", "a path",
    "a brick wall", "a wall", "a wooden fence", "a floor", "a carpet", "tiles", "a ceiling", "a roof", "a window",
    "a door", "stairs", "a building", "a house", "a city skyline", "a bridge", "a shadow", "a reflection",
    "wood", "metal", "plastic", "glass", "fabric", "paper", "cardboard", "leather", "concrete", "marble", "rust",
    "fur", "feathers", "scales", "skin", "hair", "a face", "a human face", "an eye", "eyes", "a nose", "a mouth",
    "teeth", "an ear", "a hand", "fingers", "an arm", "a leg", "a foot", "a head", "a person", "a man", "a woman",
    "a child", "a crowd of people", "an animal's head", "a paw", "a tail", "a wing", "a beak", "horns", "a snout",
    "whiskers", "text", "letters", "a sign", "a logo", "a label", "a screen", "a pattern", "stripes", "spots",
    "a checkered pattern", "a shiny surface", "a blurry background", "a dark background", "a white background",
    "light", "fire", "smoke", "food", "a plate of food", "a wheel", "a handle", "a light bulb",
)


def general_phrases(classes: tuple[str, ...] = ()) -> list[str]:
    """The bank's phrases, each once, in a fixed order: ImageNet's names, the stuff above, the run's classes."""
    names = [with_article(n) for n in IMAGENET_CLASSNAMES] + list(STUFF)
    names += [with_article(c.replace("_", " ")) for c in classes]
    return list(dict.fromkeys(names))
