import numpy as np
import torch

from mapcap.tasks.metrics.faithfulness import FRACTIONS, _keep_masks, auc, mass_share, pointing_grid, pointing_pixel


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


def test_keep_masks_remove_the_right_cells():
    maps = torch.arange(16.0).view(1, 4, 4)
    keep = _keep_masks(maps, 0.25, True, 8)  # remove the 4 most relevant cells: the last row
    assert keep[0, 0, 6:].sum() == 0 and keep[0, 0, :6].sum() == 48
    keep = _keep_masks(maps, 0.25, False, 8)  # least relevant: the first row
    assert keep[0, 0, :2].sum() == 0


def test_auc_of_constant_curves():
    assert abs(auc(torch.ones(3, len(FRACTIONS))) - 1.0) < 1e-9
    assert abs(auc(torch.zeros(2, len(FRACTIONS)))) < 1e-9


def test_insertion_shows_the_cells_deletion_removes():
    from mapcap.tasks.metrics.faithfulness import perturbation_curves
    seen = []

    class Probe:  # a stand-in model that records what it is shown
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
    perturbation_curves(Probe, pixels, maps, torch.eye(2), torch.tensor([0]), torch.tensor([0]))
    pos, ins = seen[3], seen[5]  # fraction 0.1 (seen[4]: negative) (round(1.6) = 2 cells)
    assert torch.equal(pos + ins, pixels)  # insertion shows exactly what deletion removed
    assert ins[0, 0, 6:, 4:].sum() == 8 and ins[0, 0, :6].sum() == 0  # the 2 most relevant cells, 2 × 4 px
    assert seen[2].sum() == 0  # fraction 0: insertion shows nothing
