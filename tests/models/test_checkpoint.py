import os
import pickle

import pytest
import torch

from kdmsi.models import SiameseCAMNet, SiameseDeepLabV3Plus
from kdmsi.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    save_detector,
)

NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _meta(kind, model):
    return {
        "kind": kind,
        "model": model.config(),
        "bands": [1, 2, 3],
        "normalisation": NORM,
        "tile_size": 256,
        "threshold": 0.4,
        "training": {"selection": {"criterion": "last_epoch", "epoch": 1}},
    }


def test_detector_round_trip_gives_identical_outputs(tmp_path):
    net = SiameseDeepLabV3Plus("resnet18").eval()
    path = save_checkpoint(
        tmp_path / "m.kdmsi", _meta("detector", net), state_dict=net.state_dict()
    )
    loaded, meta = load_checkpoint(path)
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x, y), loaded(x, y))
    assert meta["threshold"] == 0.4 and meta["library_version"]
    assert meta["training"]["selection"]["criterion"] == "last_epoch"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_loading_holds_the_weights_once_and_they_still_train(tmp_path):
    """The loaded network uses the file's tensors themselves (no random-init copy to
    overwrite), keeps trainable parameters, and a fine-tuning step changes them."""
    net = SiameseDeepLabV3Plus("resnet18").eval()
    path = save_checkpoint(
        tmp_path / "m.kdmsi", _meta("detector", net), state_dict=net.state_dict()
    )
    loaded, _ = load_checkpoint(path)
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert tensors and not any(t.is_meta for t in tensors)
    assert all(p.requires_grad for p in loaded.parameters())
    loaded.train()
    optimiser = torch.optim.SGD(loaded.parameters(), lr=0.1)
    x = torch.randn(2, 3, 64, 64)
    loaded(x, x.flip(-1)).mean().backward()
    optimiser.step()
    changed = [
        name
        for name, p in loaded.named_parameters()
        if not torch.equal(p.detach(), net.state_dict()[name])
    ]
    assert changed


def test_kd_round_trip_keeps_teacher_and_student(tmp_path):
    teacher, student = SiameseCAMNet("resnet18").eval(), SiameseCAMNet("resnet18").eval()
    path = save_checkpoint(
        tmp_path / "kd.kdmsi",
        _meta("kd", student),
        state_dicts={"teacher": teacher.state_dict(), "student": student.state_dict()},
    )
    x = torch.randn(1, 3, 64, 64)
    t, _ = load_checkpoint(path, role="teacher")
    s, _ = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(t(x, -x), teacher(x, -x))
        assert torch.equal(s(x, -x), student(x, -x))


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    net = SiameseDeepLabV3Plus("resnet18")
    good = save_checkpoint(
        tmp_path / "m.kdmsi", _meta("detector", net), state_dict=net.state_dict()
    )
    truncated = tmp_path / "truncated.kdmsi"
    truncated.write_bytes(good.read_bytes()[:5000])
    garbage = tmp_path / "garbage.kdmsi"
    garbage.write_bytes(os.urandom(2048))
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="not a readable kdmsi model file"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.kdmsi")


def test_a_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(SiameseCAMNet("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError, match="not a kdmsi model"):
        read_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    path = tmp_path / "evil.kdmsi"
    torch.save({"format": "kdmsi-checkpoint", "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
    assert not _Exploit.marker.exists()


def test_bad_metadata_and_mismatched_weights_are_refused(tmp_path):
    net = SiameseDeepLabV3Plus("resnet18")
    path = tmp_path / "m.kdmsi"
    payload = {"format": "kdmsi-checkpoint", "format_version": 1, "metadata": {"kind": "detector"}}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="metadata lacks"):
        load_checkpoint(path)
    meta = _meta("detector", net)
    meta["model"] = {"backbone": "resnet34", "in_channels": 3}
    save_checkpoint(path, meta, state_dict=net.state_dict())
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path)
    torch.save({**payload, "format_version": 99}, path)
    with pytest.raises(CheckpointError, match="upgrade kdmsi"):
        load_checkpoint(path)


def test_save_refuses_a_missing_folder(tmp_path):
    net = SiameseDeepLabV3Plus("resnet18")
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "m.kdmsi", _meta("detector", net), state_dict={})


def test_mobilenet_detector_round_trip_records_the_backbone(tmp_path):
    from kdmsi.data.normalisation import Normalisation

    net = SiameseDeepLabV3Plus("mobilenet_v3_large").eval()
    path = save_detector(tmp_path / "m.kdmsi", net, [1, 2, 3], Normalisation.default(3), 64)
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == {"backbone": "mobilenet_v3_large", "in_channels": 3}
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x, y), loaded(x, y))
