"""dlstudy/http2.py replaces hyperframe's DATA-frame repr: same text, a fraction of the work."""

from __future__ import annotations

import hyperframe.frame
import pytest
from hyperframe.frame import DataFrame

from dlstudy import http2


@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 16_384, 65_536])
def test_frame_repr_is_hyperframes_own_text(size: int) -> None:
    data = bytes(range(256)) * 256
    frame = DataFrame(1, data[:size])
    assert hyperframe.frame._raw_data_repr is http2._raw_data_repr
    assert http2._raw_data_repr(frame.data) == http2._full_hex_repr(frame.data)
    assert "<hex:" in repr(frame) or size == 0


def test_repr_of_no_data_is_unchanged() -> None:
    assert http2._raw_data_repr(None) == http2._full_hex_repr(None) == "None"
