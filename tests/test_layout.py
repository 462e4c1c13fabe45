import json

import pytest

from aromni.layout import AR_OMNI_V0_1 as L, Layout


def test_code_id_round_trip_and_refusals():
    assert L.image_ids([0, 8191]) == [4, 8195]
    assert L.image_codes([4, 8195]) == [0, 8191]
    assert L.speech_ids([0, 4095]) == [8724, 12819]
    assert L.speech_codes([8724, 12819]) == [0, 4095]
    for bad in ([-1], [8192]):
        with pytest.raises(ValueError):
            L.image_ids(bad)
    for bad in ([3], [8196]):
        with pytest.raises(ValueError):
            L.image_codes(bad)
    for bad in ([-1], [4096]):
        with pytest.raises(ValueError):
            L.speech_ids(bad)
    for bad in ([8723], [12820]):
        with pytest.raises(ValueError):
            L.speech_codes(bad)


def test_layout_json_round_trip():
    d = json.loads(L.to_json())
    assert Layout.from_dict(d) == L
    with pytest.raises(ValueError, match="unknown layout keys"):
        Layout.from_dict({**d, "bogus": 1})


def test_text_ids_exclude_codes_and_span_markers():
    assert L.is_text_id(0) and L.is_text_id(12830) and L.is_text_id(20000)
    assert not any(L.is_text_id(i) for i in (4, 8195, 8196, 8197, 8724, 12819, 12820, 12821, 65536, -1))
