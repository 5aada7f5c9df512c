import numpy as np
import torch

from mapcap.tasks.metrics.causal import causal_passes, cell_order
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


def test_perturbation_plan_removes_the_most_and_the_least_relevant():
    maps = torch.arange(64.0).view(1, 8, 8)
    plan = perturbation_plan(maps)
    ns = [round(f * 64) for f in FRACTIONS]
    assert plan["positive"] == [("bottom", n) for n in ns] and plan["negative"] == [("top", 64 - n) for n in ns]


def test_auc_of_constant_curves():
    assert abs(auc(torch.ones(3, len(FRACTIONS))) - 1.0) < 1e-9
    assert abs(auc(torch.zeros(2, len(FRACTIONS)))) < 1e-9


class _Probe:
    """A stand-in model that records what it is shown."""
    autocast_dtype = None
    tower = None  # not compiled
    seen: list = []

    class spec:
        device = "cpu"

    class model:
        logit_scale = torch.tensor(0.0)

        @staticmethod
        def encode_image(x):
            _Probe.seen.append(x.clone())
            return torch.ones(x.shape[0], 2)


def test_positive_perturbation_shows_the_base_where_the_most_relevant_cells_were():
    from mapcap.tasks.metrics.faithfulness import perturbation_curves, perturbed_passes
    _Probe.seen = []
    maps = torch.arange(16.0).view(1, 4, 4)  # the last row is the most relevant
    pixels = torch.ones(1, 3, 8, 8)
    base = torch.full_like(pixels, -2.0)  # e.g. black after normalisation
    ticks: list[int] = []
    curves = perturbation_curves(_Probe, pixels, maps, torch.eye(2), torch.tensor([0]), tick=ticks.append,
                                 base=base)
    assert {tuple(v.shape) for v in curves.values()} == {(1, len(FRACTIONS)), (1, 2)}
    assert len(_Probe.seen) == len({x.numpy().tobytes() for x in _Probe.seen})  # no image is classified twice
    # the stage's progress counts these passes: all but the unperturbed image, one tick each
    assert len(ticks) == perturbed_passes(4) - causal_passes(4, None) and len(_Probe.seen) == len(ticks) + 1
    pos = next(x for x in _Probe.seen if (x[0, 0] == -2).sum() == 8)  # fraction 0.1: round(1.6) = 2 cells removed
    assert (pos[0, 0, 6:, 4:] == -2).all() and (pos[0, 0, :6] == 1).all()  # the 2 most relevant cells


def test_ties_are_ranked_by_cell_index():
    maps = torch.zeros(2, 3, 3)
    maps[0, 1, 1] = 1.0
    assert cell_order(maps)[0].tolist() == [4, 0, 1, 2, 3, 5, 6, 7, 8]
    assert cell_order(maps)[1].tolist() == list(range(9))
