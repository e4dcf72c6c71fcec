"""The one parameter check of every detector (``_base.check_param``)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from driftline.detectors import _base
from driftline.detectors._base import check_param


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"low": 1, "integer": True}, 0, "n must be an integer >= 1, got 0"),
        ({"low": 1, "integer": True}, 2.5, "n must be an integer >= 1, got 2.5"),
        ({"low": 1, "integer": True}, True, "n must be an integer >= 1, got True"),
        ({"low": 0, "high": 1, "low_open": True}, 0.0, "n must be a number in (0, 1], got 0.0"),
        ({"low": 0, "high": 1, "low_open": True, "high_open": True}, 1, "n must be a number in (0, 1), got 1"),
        ({"low": 0}, math.nan, "n must be a finite number >= 0, got nan"),
        ({"low": 0, "low_open": True}, math.inf, "n must be a finite number > 0, got inf"),
        ({"choices": ("up", "down")}, "sideways", "n must be one of ['up', 'down'], got 'sideways'"),
        ({"choices": (True, False)}, 1, "n must be True or False, got 1"),
        ({"low": 0, "integer": True, "optional": True}, -1, "n must be None or an integer >= 0, got -1"),
        (
            {"low": 60, "integer": True, "why": "2 * stat_size"},
            50,
            "n must be an integer >= 60 (2 * stat_size), got 50",
        ),
    ],
)
def test_rejections_name_the_parameter_and_what_it_may_be(kwargs, value, message):
    with pytest.raises(ValueError) as info:
        check_param("n", value, **kwargs)
    assert str(info.value) == message


def test_accepted_values_come_back_as_plain_python_values():
    assert type(check_param("n", np.int64(5), low=1, integer=True)) is int
    assert type(check_param("x", np.float32(0.5), low=0, high=1)) is float
    assert check_param("x", 3, low=0) == 3.0 and type(check_param("x", 3, low=0)) is float
    assert check_param("flag", np.bool_(True), choices=(True, False)) is True
    assert type(check_param("mode", np.str_("up"), choices=("up", "down"))) is str
    assert check_param("seed", None, low=0, integer=True, optional=True) is None


def test_docstring_examples_run():
    assert doctest.testmod(_base).failed == 0
