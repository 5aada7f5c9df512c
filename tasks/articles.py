"""The indefinite article: one rule for every generated English phrase ("an orange circle", "a red star").

Toy reference captions, the retrieval phrase bank and the toy training captions all build their phrases here, so a
caption comparison never rewards a captioner for the article its training text happened to use.
"""
from __future__ import annotations

import re

# Written words whose first letter misleads: a consonant sound before a vowel letter, a silent h.
_A_BEFORE_VOWEL = ("one", "once", "uni", "use", "usu", "uti", "eu", "ewe", "ubiq")
_AN_BEFORE_H = ("hour", "honest", "honour", "honor", "heir")


def indefinite_article(word: str) -> str:
    """'an' before a vowel sound, else 'a', judged from the written word (with the common exceptions)."""
    w = word.strip().lower()
    if not w:
        raise ValueError("indefinite_article needs a word; got an empty string")
    if w.startswith(_AN_BEFORE_H):
        return "an"
    if w[0] in "aeiou" and not w.startswith(_A_BEFORE_VOWEL):
        return "an"
    return "a"


def with_article(phrase: str) -> str:
    """The phrase after its indefinite article: 'orange circle' → 'an orange circle'."""
    return f"{indefinite_article(phrase.split()[0] if phrase.strip() else phrase)} {phrase.strip()}"


_ARTICLE = re.compile(r"\b(a|an|A|An)( +)([A-Za-z]+)")


def fix_articles(text: str) -> str:
    """Every 'a'/'an' of a sentence made to agree with the next word ('a photo of a orange circle' → '... an
    orange circle'): for templates filled with a phrase they were not written for."""
    def agree(m: re.Match) -> str:
        art = indefinite_article(m.group(3))
        return f"{art.capitalize() if m.group(1)[0] == 'A' else art}{m.group(2)}{m.group(3)}"
    return _ARTICLE.sub(agree, text)
