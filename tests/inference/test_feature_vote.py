"""The pretrained features' vote in the pseudo labels (`kdmsi.inference.feature_vote`)."""

import numpy as np
import pytest

from kdmsi.geo.tiling import Window
from kdmsi.inference.feature_vote import context_window, vote, zero_shot_tile_maps
from kdmsi.inference.zero_shot import ZERO_SHOT_THRESHOLD


def test_context_window_is_centred_shifted_inside_and_padded():
    assert context_window(Window(500, 500, 64, 64), 1000, 1000) == Window(404, 404, 256, 256)
    assert context_window(Window(0, 936, 64, 64), 1000, 1000) == Window(0, 744, 256, 256)
    small = context_window(Window(0, 0, 64, 64), 100, 300)
    assert (small.w, small.h, small.pad_x, small.pad_y) == (100, 256, 156, 0)


def test_vote_weighs_each_margin_over_its_own_threshold():
    msi = np.array([0.9, 0.9, 0.55, 0.2, 0.2])
    z = np.array([0.05, 0.39, 0.6, 0.7, 0.05]) * (ZERO_SHOT_THRESHOLD / 0.39)
    # t_msi 0.5: the first is sure by MSI but the features see nothing (a CAM spread): out;
    # the fourth is far over the features' threshold and a little under MSI's: in
    assert vote(msi, 0.5, z, 0.5).tolist() == [False, True, True, True, False]
    assert vote(msi, 0.5, z, 0.0).tolist() == (msi > 0.5).tolist()  # w 0: MSI alone
    assert vote(msi, 0.5, z, 1.0).tolist() == (z > ZERO_SHOT_THRESHOLD).tolist()


def test_zero_shot_tile_maps_of_a_tagged_dataset(scene_pair):
    from kdmsi.data.pairs import Normalisation
    from kdmsi.data.tagged import RasterTileDataset
    from kdmsi.geo.align import align_pair
    from kdmsi.geo.stretch import pair_stretches

    with align_pair(scene_pair["before"], scene_pair["after"]) as pair:
        windows = [(Window(0, 0, 64, 64), 1), (Window(192, 128, 64, 64), 0)]
        dataset = RasterTileDataset(
            pair, windows, pair_stretches(pair), Normalisation.default(3), 64
        )
        maps = zero_shot_tile_maps(dataset, [0])
    assert list(maps) == [0] and maps[0].shape == (64, 64) and maps[0].dtype == np.float32
    assert 0.0 <= maps[0].min() and maps[0].max() <= 1.0
    assert maps[0].std() > 0  # a map, not a constant


def test_feature_vote_is_checked_like_every_number(tmp_path, scene_pair, capsys):
    from kdmsi.cli import main

    pair = ["--before", str(scene_pair["before"]), "--after", str(scene_pair["after"])]
    argv = ["train", *pair, "--tiles", "t.gpkg", "--out", str(tmp_path / "m.kdmsi")]
    assert main([*argv, "--feature-vote", "1.5"]) == 2
    assert "--feature-vote must be" in capsys.readouterr().err


@pytest.mark.parametrize(
    "weight, seen, expected",
    [(0.0, 8, 1.0), (0.5, 8, 0.25), (0.5, 0, 1.0)],  # the last: the vote would erase them all
)
def test_pseudo_labels_use_the_second_opinion_only_with_a_weight(weight, seen, expected):
    import torch

    from kdmsi.inference.pseudo_labels import msi_pseudo_labels

    class Tiles(torch.utils.data.Dataset):
        labels = [1, 0]
        bands = [1, 2, 3]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            x = torch.zeros(3, 32, 32)
            valid = torch.ones(32, 32, dtype=torch.bool)
            return {"pre": x, "post": x, "mask": torch.full((32, 32), 255), "valid": valid,
                    "label": 1.0 - i}  # fmt: skip

    class Flat(torch.nn.Module):  # MSI 0.9 everywhere: all change by MSI alone
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor(2.2))

        def forward(self, pre, post):
            return self.bias.expand(pre.shape[0], 1, pre.shape[2], pre.shape[3])

    distance = np.zeros((32, 32), np.float32)
    distance[:seen] = 0.7  # the features see change in the top quarter only (or nowhere)
    masks, choice = msi_pseudo_labels(
        Flat(), Tiles(), 0.5, (1.0,), flip=False, second_opinion={0: distance},
        vote_weight=weight,
    )  # fmt: skip
    assert masks[0].mean() == pytest.approx(expected) and masks[1].max() == 0
