"""Prompt templates: named sets and user lists, validated once."""
from __future__ import annotations

import re

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # the 80 templates of CLIP's ImageNet zero-shot evaluation, as open_clip ships them
    "openai": tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES),
    # a short, common set: the default
    "simple": ("a photo of a {}.", "{}", "a {}", "a picture of a {}", "an image of a {}"),
    # the templates our users compared (including deliberately bad ones)
    "compare": ("This is a photo of {}", "This is not a photo of {}", "No {}, no score.", "This is a {} image.",
                "a photo of a {}."),
}


def prompt_name(class_name: str) -> str:
    """A class name as prompts and captions say it: folder names join words with underscores
    ('golden_retriever'), which CLIP's tokenizer reads as a separate token and no caption contains."""
    return class_name.replace("_", " ")


ID_LIKE = re.compile(r"n\d{8}|[\W\d_]+")  # WordNet ids (ImageNet's folders: n01440764), names without a letter


def id_like(classes: tuple[str, ...]) -> list[str]:
    """The class names that are ids rather than words: a prompt says them as they are ('a photo of a n01440764.'),
    so zero-shot classification by them is chance; a class map names them."""
    return [c for c in classes if ID_LIKE.fullmatch(c)]


def fill(template: str, class_name: str) -> str:
    """One template's prompt for a class."""
    return template.format(prompt_name(class_name))


def resolve_templates(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A named set ('openai', 'simple', 'compare'), or a user list of templates with one '{}' each."""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return TEMPLATE_SETS[spec]
        if "{}" not in spec:
            raise ValueError(f"templates {spec!r} is neither a named set ({', '.join(TEMPLATE_SETS)}) nor a "
                             f"template with a '{{}}' placeholder for the class name")
        spec = [spec]
    templates = tuple(spec)
    if not templates:
        raise ValueError("the template list is empty; give at least one template such as 'a photo of a {}.'")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}' where the class name goes")
    if "ensemble" in templates:
        raise ValueError("'ensemble' is reserved for the template-ensemble rows; rename that template")
    return tuple(dict.fromkeys(templates))  # de-duplicated, order kept
