import numpy as np
import torch

from mapcap.tasks.metrics.faithfulness import FRACTIONS, perturbation_plan, auc, mass_share, pointing_grid, pointing_pixel


def _square_mask(H=128, box=(10, 10, 40, 40)):
    m = np.zeros((H, H), bool)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_game_grid_and_pixel():
    mask = _square_mask()
    good = np.zeros((8, 8))
    good[1, 1] = 1.0  # cell rows/cols 16..32 px: on the object
    bad = np.zeros((8, 8))
    bad[6, 6] = 1.0
    assert pointing_grid(good, mask) and not pointing_grid(bad, mask)
    assert pointing_pixel(good, mask) and not pointing_pixel(bad, mask)
    near = np.zeros((8, 8))
    near[2, 3] = 1.0  # peak ~ (44, 60) px: beyond 15·128/224 ≈ 8.6 px of the box edge at x=40? no: 20 px
    assert not pointing_pixel(near, mask)


def test_mass_share_tells_objects_apart():
    own, other = _square_mask(box=(0, 0, 64, 64)), _square_mask(box=(64, 64, 128, 128))
    m = np.zeros((8, 8))
    m[:4, :4] = 1.0
    assert mass_share(m, own, other) > 0.9 and mass_share(m, other, own) < 0.1
    assert abs(mass_share(np.ones((8, 8)), own, other) - 0.5) < 1e-6


def test_perturbation_plan_pairs_negative_with_insertion():
    maps = torch.arange(64.0).view(1, 8, 8)
    plan = perturbation_plan(maps)
    ns = [round(f * 64) for f in FRACTIONS]
    assert plan["insertion"] == [("top", n) for n in ns] and plan["positive"] == [("bottom", n) for n in ns]
    assert plan["negative"][0] == ("top", 64)  # nothing removed
    # negative at f shows what insertion shows at 1 - f: those images are classified once
    assert set(plan["negative"][1:]) <= set(plan["insertion"])


def test_auc_of_constant_curves():
    assert abs(auc(torch.ones(3, len(FRACTIONS))) - 1.0) < 1e-9
    assert abs(auc(torch.zeros(2, len(FRACTIONS)))) < 1e-9


def test_insertion_shows_the_cells_deletion_removes():
    from mapcap.tasks.metrics.faithfulness import perturbation_curves, perturbed_passes
    seen = []

    class Probe:  # a stand-in model that records what it is shown
        autocast_dtype = None
        tower = None  # not compiled

        class spec:
            device = "cpu"

        class model:
            logit_scale = torch.tensor(0.0)

            @staticmethod
            def encode_image(x):
                seen.append(x.clone())
                return torch.ones(x.shape[0], 2)

    maps = torch.arange(16.0).view(1, 4, 4)  # the last row is the most relevant
    pixels = torch.ones(1, 3, 8, 8)
    ticks: list[int] = []
    curves = perturbation_curves(Probe, pixels, maps, torch.eye(2), torch.tensor([0]), torch.tensor([0]),
                                 tick=ticks.append)
    assert {tuple(v.shape) for v in curves.values()} == {(1, len(FRACTIONS)), (1, 2)}
    assert len(seen) == len({x.numpy().tobytes() for x in seen})  # no image is classified twice
    # the stage's progress counts these passes: all but the unperturbed and the blank image, one tick each
    assert ticks == [1] * perturbed_passes(4) and len(seen) == perturbed_passes(4) + 2
    cells = maps.flatten().argsort(descending=True)

    def shown(top: int) -> torch.Tensor:  # the image with only the `top` most relevant cells
        keep = torch.zeros(16)
        keep[cells[:top]] = 1
        want = torch.nn.functional.interpolate(keep.view(1, 1, 4, 4), size=(8, 8)).expand(1, 3, 8, 8)
        return next(x for x in seen if torch.equal(x, want))

    ins, pos = shown(2), next(x for x in seen if torch.equal(x, pixels - shown(2)))  # fraction 0.1: round(1.6) = 2
    assert ins[0, 0, 6:, 4:].sum() == 8 and ins[0, 0, :6].sum() == 0  # insertion: the 2 most relevant cells
    assert pos[0, 0, 6:, 4:].sum() == 0  # deletion removed exactly those
    assert shown(11) is not None  # negative at 0.3 (5 least relevant removed) = insertion at 0.7: one image
    assert shown(0).sum() == 0  # fraction 0: insertion shows nothing
