"""Caption quality against reference captions: BLEU-1..4 and CIDEr-D as the coco-caption toolkit computes them.

Pure Python, no Java: the coco-caption scorers (pycocoevalcap's `Bleu`, `Cider`) are reproduced here and checked
against their numbers in tests/tasks/test_caption_quality.py; their PTB tokenizer (Java) is replaced by
`tokenize`, a lower-casing, punctuation-dropping word split. Both metrics are corpus metrics: BLEU pools n-gram
counts over the corpus, CIDEr-D takes its document frequencies from the references of the corpus scored.
"""
from __future__ import annotations

import functools
import math
import re
from collections import Counter

import numpy as np

Ngrams = Counter  # {tuple of words: count}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words, punctuation dropped ("A red star, top-left." → a red star top left)."""
    return _WORD.findall(text.lower())


def ngrams(words: list[str], n: int = 4) -> Ngrams:
    """Counts of every 1..n-gram of the words."""
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(candidates: list[str], references: list[list[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists: give one list of "
                         f"references per candidate")
    empty = [i for i, r in enumerate(references) if not r]
    if empty:
        raise ValueError(f"candidates {empty[:5]} have no reference captions; score only captions with references")


def bleu(candidates: list[str], references: list[list[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n as coco-caption's `Bleu` (option 'closest'): clipped n-gram counts and lengths pooled over
    the corpus, the reference length of each candidate the one closest to it (the shorter on a tie), BLEU-k the
    geometric mean of precisions 1..k times the brevity penalty, with coco-caption's 1e-15 / 1e-9 smoothing."""
    _check(candidates, references)
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    words_of = {t: tokenize(t) for t in {*candidates, *(r for rs in references for r in rs)}}
    grams = {t: ngrams(w, n) for t, w in words_of.items()}  # per distinct text: captions repeat
    for cand, refs in zip(candidates, references):
        words, counts = words_of[cand], grams[cand]
        ref_words = [words_of[r] for r in refs]
        most: Counter = Counter()
        for r in refs:
            most |= grams[r]  # per n-gram, its largest count in any one reference
        test_len += len(words)
        ref_len += min((abs(len(rw) - len(words)), len(rw)) for rw in ref_words)[1]
        for g, c in counts.items():
            correct[len(g) - 1] += min(c, most[g])
        for k in range(n):
            guess[k] += max(0, len(words) - k)
    out, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + 1e-15) / (guess[k] + 1e-9)
        out.append(product ** (1 / (k + 1)))
    ratio = (test_len + 1e-15) / (ref_len + 1e-9)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [b * penalty for b in out]


def _tfidf(counts: Ngrams, df: Counter, log_docs: float, n: int) -> tuple[list[dict], np.ndarray, int]:
    """Per n-gram order: {ngram: tf · idf}, the vector norms (n,), and the length CIDEr-D compares (its count of
    bigrams, as coco-caption counts it)."""
    vec: list[dict] = [{} for _ in range(n)]
    for g, tf in counts.items():
        vec[len(g) - 1][g] = tf * (log_docs - math.log(max(1.0, df[g])))
    norm = np.array([math.sqrt(sum(v * v for v in order.values())) for order in vec])  # (n,)
    length = sum(tf for g, tf in counts.items() if len(g) == 2)
    return vec, norm, length


def cider_d(candidates: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """CIDEr-D per candidate as coco-caption's `Cider`: tf-idf vectors of 1..n-grams (document frequency over the
    references of this corpus, idf log(#images) − log(max(1, df))), candidate weights clipped at the reference's,
    a Gaussian length penalty exp(−Δ²/2σ²), the mean over n-gram orders and references, × 10. The corpus score is
    the mean of the list."""
    _check(candidates, references)
    grams = {t: ngrams(tokenize(t), n) for t in {*candidates, *(r for rs in references for r in rs)}}
    df: Counter = Counter()
    for rs in references:
        df.update({g for r in rs for g in grams[r]})  # an n-gram counts once per image
    log_docs = math.log(float(len(references))) if references else 0.0
    tfidf = {t: _tfidf(c, df, log_docs, n) for t, c in grams.items()}  # per distinct text: captions repeat

    @functools.lru_cache(maxsize=None)
    def similarity(cand: str, ref: str) -> np.ndarray:
        """(n,) the candidate's length-penalised cosine with one reference, per n-gram order."""
        (vec, norm, length), (rvec, rnorm, rlength) = tfidf[cand], tfidf[ref]
        out = np.zeros(n)
        for k in range(n):
            val = sum(min(w, rvec[k].get(g, 0.0)) * rvec[k].get(g, 0.0) for g, w in vec[k].items())
            if norm[k] != 0 and rnorm[k] != 0:
                val /= norm[k] * rnorm[k]
            out[k] = val * math.exp(-((length - rlength) ** 2) / (2 * sigma ** 2))
        return out

    scores = []
    for cand, rs in zip(candidates, references):
        total = np.zeros(n)  # (n,) summed over references
        for r in rs:
            total += similarity(cand, r)
        scores.append(float(total.mean() / len(rs) * 10.0))
    return scores
