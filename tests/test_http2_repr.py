"""dlstudy/h2frames.py replaces hyperframe's DATA-frame body repr: same text, a fraction of
the work (h2 formats it for every received frame)."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, Frame

from dlstudy import h2frames


def hyperframes_own_text(frame: DataFrame) -> str:
    return Frame._body_repr(frame)  # serializes the frame and hex-encodes all of it


@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 16_384, 65_536])
@pytest.mark.parametrize("pad_length", [None, 0, 1, 5, 255])
def test_data_frame_repr_is_hyperframes_own_text(size: int, pad_length: int | None) -> None:
    frame = DataFrame(1, (bytes(range(256)) * 256)[:size])
    if pad_length is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad_length
    assert DataFrame._body_repr is h2frames._data_frame_body_repr
    assert frame._body_repr() == hyperframes_own_text(frame)
    assert repr(frame).endswith(hyperframes_own_text(frame))


def test_repr_of_a_body_read_in_place() -> None:
    frame = DataFrame(3, bytearray(b"\x01" * 20))  # type: ignore[arg-type]
    assert frame._body_repr() == "<hex:01010101010101010101...>" == hyperframes_own_text(frame)
