"""Mixed precision for detect (`--precision`): autocast on the torch path, clear refusals."""

import numpy as np
import pytest
import torch

from kdmsi.cli import main
from kdmsi.models import SiameseDeepLabV3Plus
from kdmsi.runtime.batch_runners import autocast_dtype, forward_batch, model_predictor


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return SiameseDeepLabV3Plus("resnet18", in_channels=3, head_channels=32).eval()


def test_bf16_autocast_gives_float32_probabilities_close_to_fp32(detector):
    rng = np.random.default_rng(0)
    pre = rng.standard_normal((2, 3, 64, 64), dtype=np.float32)
    post = pre + 0.5 * rng.standard_normal((2, 3, 64, 64), dtype=np.float32)
    predict = model_predictor(detector, "detector")
    full = forward_batch(predict, pre, post, torch.device("cpu"))
    half = forward_batch(predict, pre, post, torch.device("cpu"), precision="bf16")
    assert half.dtype == np.float32 and half.shape == full.shape == (2, 64, 64)
    assert 0 < np.abs(half - full).max() < 0.05  # bf16 ran (not identical), and stayed close


def test_unknown_or_unsupported_precisions_are_refused():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        autocast_dtype("int8", cpu)


def test_cli_answers_bad_precision_choices_in_one_line(scene_pair, detector, tmp_path, capsys):
    from kdmsi.data.pairs import Normalisation
    from kdmsi.models.checkpoint import save_detector

    model = save_detector(tmp_path / "d.kdmsi", detector, [1, 2, 3], Normalisation.default(3), 64)
    base = ["detect", "--before", str(scene_pair["before"]), "--after", str(scene_pair["after"])]
    base += ["--model", str(model), "--out", str(tmp_path / "c.gpkg"), "--device", "cpu"]
    for extra, expected in (
        (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
        (["--precision", "bf16", "--runtime", "onnx"], "runs with torch"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert expected in err[-1] and "Traceback" not in "\n".join(err)
        assert not (tmp_path / "c.gpkg").exists()
    assert main([*base, "--precision", "bf16", "--runtime", "torch"]) == 0
    assert (tmp_path / "c.gpkg").is_file()
