"""Where the ablation's thresholds come from, as the library (not the CLI) decides it."""

from __future__ import annotations

import json

from kdmsi.reports.ablation import pseudo_label_threshold
from kdmsi.runtime.load import stored_threshold


def test_pseudo_label_threshold_precedence(tmp_path):
    meta = {"training": {"pseudo_labels": {"threshold": {"value": 0.42}}}}
    folder = tmp_path / "pseudo" / "labels"
    folder.mkdir(parents=True)
    (folder.parent / "pseudo_labels.json").write_text(json.dumps({"threshold": {"value": 0.3}}))
    given, source = pseudo_label_threshold(0.6, meta, "d.kdmsi", folder)
    assert (given.value, given.method, source) == (0.6, "given", "--pseudo-threshold")
    stored, source = pseudo_label_threshold(None, meta, "d.kdmsi", folder)
    assert (stored.value, source) == (0.42, "d.kdmsi")
    from_json, source = pseudo_label_threshold(None, None, None, folder)
    assert from_json.value == 0.3 and source.endswith("pseudo_labels.json")
    assert pseudo_label_threshold(None, None, None, None) == (None, None)


def test_stored_threshold_names_how_it_was_chosen():
    calibrated = {"threshold": 0.37, "training": {"detector": {"threshold": {"method": "x"}}}}
    assert (stored_threshold(calibrated).value, stored_threshold(calibrated).method) == (
        0.37,
        "stored: x",
    )
    assert stored_threshold({"threshold": None}).method == "argmax"
