import numpy as np
import pytest
import torch

from kdmsi.data.pairs import (
    IGNORE_INDEX,
    DatasetError,
    Normalisation,
    PairDataset,
    paired_augment,
    tile_origins,
    write_image,
)


def _write_pair(root, name, pre, post, mask=None):
    for sub, img in (("A", pre), ("B", post)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        write_image(root / sub / f"{name}.png", img)
    if mask is not None:
        (root / "label").mkdir(exist_ok=True)
        write_image(root / "label" / f"{name}.png", mask)


def test_tile_origins_cover_the_image_and_stay_inside():
    assert tile_origins(256, 256) == [0]
    assert tile_origins(400, 256) == [0, 144]
    assert tile_origins(1024, 256) == [0, 256, 512, 768]
    assert tile_origins(100, 256) == [0]


def test_large_images_are_cut_into_tiles_with_labels_from_masks(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 512, 400), dtype=np.uint8)
    mask = np.zeros((512, 400), np.uint8)
    mask[300:310, 10:20] = 255
    _write_pair(tmp_path, "big", img, img, mask)
    ds = PairDataset(tmp_path, tile_size=256)
    assert len(ds) == 4
    assert [t.key for t in ds.tiles][:2] == ["big", "big@0_144"]
    assert ds.labels == [0, 0, 1, 0]
    item = ds[2]
    assert item["pre"].shape == (3, 256, 256) and item["pre"].dtype == torch.float32
    assert item["mask"].sum() == 100 and item["label"] == 1.0 and ds.has_masks


def test_small_images_are_padded_and_padding_is_ignored(tmp_path):
    img = np.full((3, 100, 120), 7, np.uint8)
    _write_pair(tmp_path, "small", img, img, np.zeros((100, 120), np.uint8))
    item = PairDataset(tmp_path, tile_size=128)[0]
    assert item["mask"].shape == (128, 128)
    assert (item["mask"][100:] == IGNORE_INDEX).all() and (item["mask"][:100, :120] == 0).all()


def test_csv_labels_for_images_without_masks(tmp_path):
    img = np.zeros((3, 64, 64), np.uint8)
    _write_pair(tmp_path, "a", img, img)
    _write_pair(tmp_path, "b", img, img + 50)
    (tmp_path / "labels.csv").write_text("name,changed\na.png,0\nb,1\n")
    ds = PairDataset(tmp_path, tile_size=64)
    assert ds.labels == [0, 1] and not ds.has_masks
    assert (ds[0]["mask"] == 0).all() and (ds[1]["mask"] == IGNORE_INDEX).all()


def test_dataset_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="needs folders A/"):
        PairDataset(tmp_path)
    img = np.zeros((3, 64, 64), np.uint8)
    _write_pair(tmp_path, "a", img, img)
    with pytest.raises(DatasetError, match="no mask in label/ and no row in labels.csv"):
        PairDataset(tmp_path, tile_size=64)
    (tmp_path / "labels.csv").write_text("name,changed\na,maybe\n")
    with pytest.raises(DatasetError, match="must be 0 or 1"):
        PairDataset(tmp_path, tile_size=64)
    (tmp_path / "labels.csv").write_text("name,changed\na,1\n")
    write_image(tmp_path / "B" / "a.png", np.zeros((3, 64, 32), np.uint8))
    with pytest.raises(DatasetError, match="share one grid"):
        PairDataset(tmp_path, tile_size=64)
    write_image(tmp_path / "B" / "extra.png", img)
    with pytest.raises(DatasetError, match="only in B/"):
        PairDataset(tmp_path, tile_size=64)


def test_paired_augment_applies_one_transform_to_all_three():
    rng = np.random.default_rng(3)
    pre = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    for _ in range(8):
        a, b, m = paired_augment(pre, pre + 100, pre[0], rng)
        assert np.array_equal(b, a + 100) and np.array_equal(m, a[0])


def test_normalisation():
    norm = Normalisation.default(4)
    assert norm.mean[:3] == (0.485, 0.456, 0.406) and len(norm.std) == 4
    out = Normalisation((0.5,), (0.5,))(np.array([[[0, 255]]], np.uint8))
    assert torch.allclose(out, torch.tensor([[[-1.0, 1.0]]]))
    assert Normalisation.from_dict(norm.to_dict()) == norm
