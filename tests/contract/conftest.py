from __future__ import annotations

import pytest

from tunery_contract import VerticalPack

from .dummy import make_dummy_pack


@pytest.fixture
def dummy_pack() -> VerticalPack:
    return make_dummy_pack()
