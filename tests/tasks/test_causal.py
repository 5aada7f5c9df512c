"""Deletion and insertion equal to RISE's `CausalMetric` (Petsiuk et al. 2018, github.com/eclique/RISE
`evaluation.py`), re-implemented here from the authors' definition: the explanation at pixel resolution, `step`
pixels per step, n + 1 scores from the start image to the finish image, `auc` = (sum − first/2 − last/2) / n;
the notebook's substrates (deletion: zeros of the normalised input; insertion: `gkern(11, 5)` blur)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from mapcap.tasks.metrics.causal import causal_curves, rise_auc, substrate
from mapcap.tasks.metrics.faithfulness import _probs, norm_stats
from mapcap.tasks.zeroshot import text_classifier
from mapcap.tasks.templates import resolve_templates
from mapcap.toy.dataset import make_scene
from mapcap.toy.shapes import SHAPES


def gkern(klen: int, nsig: float) -> torch.Tensor:
    """RISE's blur kernel, (3, 3, klen, klen), as their notebook builds it."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kern[c, c] = k
    return torch.from_numpy(kern.astype("float32"))


def rise_single_run(probs, img: torch.Tensor, cell_map: torch.Tensor, target: int, mode: str,
                    substrate_img: torch.Tensor, cells_per_step: int) -> float:
    """RISE's CausalMetric.single_run for one (1, 3, S, S) image: the explanation is the cell map upsampled to
    pixels (nearest); pixels are ordered by their cell's value (highest first), ties by cell index, then by pixel
    index; `step` = the pixels of `cells_per_step` cells."""
    S, g = img.shape[-1], cell_map.shape[-1]
    HW, cs = S * S, S // g
    rank = torch.empty(g * g, dtype=torch.long)
    ranked = sorted(range(g * g), key=lambda c: (-float(cell_map.flatten()[c]), c))
    rank[ranked] = torch.arange(g * g)
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    cell_of_pixel = ((ys // cs) * g + xs // cs).flatten()
    salient_order = sorted(range(HW), key=lambda p: (int(rank[cell_of_pixel[p]]), p))
    step = cells_per_step * cs * cs
    n_steps = (HW + step - 1) // step
    start, finish = (img.clone(), substrate_img) if mode == "del" else (substrate_img.clone(), img.clone())
    scores = np.empty(n_steps + 1)
    for i in range(n_steps + 1):
        scores[i] = float(probs(start)[0, target])
        if i < n_steps:
            coords = salient_order[step * i:step * (i + 1)]
            start.view(1, 3, HW)[0, :, coords] = finish.view(1, 3, HW)[0, :, coords]
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1))


@pytest.fixture(scope="module")
def toy_batch(toy_model):
    rng = np.random.default_rng(9)
    scenes = [make_scene(rng, "single", SHAPES[i]) for i in range(3)]
    pix = torch.stack([toy_model.preprocess(Image.fromarray(s.image)) for s in scenes])  # (3, 3, 64, 64)
    emb = text_classifier(toy_model, SHAPES, resolve_templates("simple"))[-1]
    probs = lambda x: _probs(toy_model, x, emb)  # noqa: E731
    target = probs(pix).argmax(-1)  # RISE explains the class the model predicts
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps[1] = 0.0
    maps[1, 2, 3], maps[1, 5, 5] = 1.0, 0.5  # mostly ties: zero cells
    maps[2] = (maps[2] * 4).round() / 4  # five distinct values: ties everywhere
    return pix, maps, target, probs


def _ends(probs, pix, deletion: torch.Tensor, insertion: torch.Tensor) -> dict:
    return {"clean": probs(pix), "deleted": probs(deletion), "inserted": probs(insertion),
            "deletion": deletion, "insertion": insertion}


def test_the_blur_substrate_is_rises_gkern():
    x = torch.randn(2, 3, 40, 40)
    want = F.conv2d(x, gkern(11, 5), padding=5)
    mean, std = torch.zeros(3), torch.ones(3)
    assert torch.allclose(substrate(x, "blur", mean, std), want, atol=1e-5)
    assert torch.equal(substrate(x, "mean", mean, std), torch.zeros_like(x))


@pytest.mark.parametrize("steps", [None, 5])
def test_deletion_and_insertion_equal_rises_causal_metric(toy_model, toy_batch, steps):
    pix, maps, target, probs = toy_batch
    mean, std = norm_stats(toy_model.preprocess)
    deletion, insertion = substrate(pix, "mean", mean, std), substrate(pix, "blur", mean, std)
    curves = causal_curves(probs, pix, maps, target, _ends(probs, pix, deletion, insertion), steps)
    per = 1 if steps is None else int(np.ceil(64 / steps))
    assert curves["deletion"].shape == (3, (64 if steps is None else 5) + 1)
    for b in range(3):
        ref_del = rise_single_run(probs, pix[b:b + 1], maps[b], int(target[b]), "del", deletion[b:b + 1], per)
        ref_ins = rise_single_run(probs, pix[b:b + 1], maps[b], int(target[b]), "ins", insertion[b:b + 1], per)
        assert abs(rise_auc(curves["deletion"])[b] - ref_del) < 1e-4
        assert abs(rise_auc(curves["insertion"])[b] - ref_ins) < 1e-4


def test_tied_maps_give_the_same_auc_every_run(toy_model, toy_batch):
    pix, maps, target, probs = toy_batch
    mean, std = norm_stats(toy_model.preprocess)
    ends = _ends(probs, pix, substrate(pix, "mean", mean, std), substrate(pix, "blur", mean, std))
    runs = [rise_auc(causal_curves(probs, pix, maps.clone(), target, ends)["deletion"]) for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    # a map equal up to a constant shift ranks its cells the same: the same AUC
    shifted = rise_auc(causal_curves(probs, pix, maps + 3.0, target, ends)["deletion"])
    assert np.array_equal(runs[0], shifted)


def test_rise_auc_is_the_normalised_trapezoid():
    s = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    assert np.allclose(rise_auc(s), [(1.5 - 0.5) / 2, 0.2])
