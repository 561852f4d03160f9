"""kdmsi.geo.metadata: values as metadata strings and back."""

from kdmsi.geo.metadata import decode_metadata, metadata_strings


def test_strings_stay_and_other_values_round_trip_as_json():
    values = {"name": "resnet18", "bands": [1, 2, 3], "stretch": {"b": 2, "a": 1}, "t": 0.5}
    strings = metadata_strings(values)
    assert strings["name"] == "resnet18" and strings["stretch"] == '{"a": 1, "b": 2}'
    assert decode_metadata(strings) == values
    assert metadata_strings(None) == {}


def test_a_string_that_is_not_json_is_kept_as_it_is():
    assert decode_metadata({"crs": "EPSG:32633", "n": "7"}) == {"crs": "EPSG:32633", "n": 7}
