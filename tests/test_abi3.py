"""What the stable-ABI build replaced still holds: the guarded Unpickler class is
immutable on 3.10+ (its flags are set through a layout-checked write), and
stack patterns still see every frame (walked with PyFrame_GetCode and f_back)."""

from __future__ import annotations

import sys

import pytest

from pickleguard import _core, _gate


def test_the_guarded_unpickler_class_is_immutable_from_3_10():
    if sys.version_info < (3, 10):
        # No immutable heap types before 3.10: nothing to seal with.
        assert not _core.seal_type(_gate.Unpickler)
        return
    with pytest.raises(TypeError, match="immutable"):
        _gate.Unpickler.load = lambda self: None  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="immutable"):
        del _gate.Unpickler.find_class


def test_seal_type_seals_a_fresh_class_and_reports_it():
    class Fresh:
        pass

    sealed = _core.seal_type(Fresh)
    assert sealed == (sys.version_info >= (3, 10))
    if sealed:
        with pytest.raises(TypeError, match="immutable"):
            Fresh.x = 1  # type: ignore[attr-defined]
    else:
        Fresh.x = 1  # type: ignore[attr-defined]
