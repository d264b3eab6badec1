"""An unknown option names the closest valid one: a misspelt keyword is the usual cause."""

from __future__ import annotations

import pytest

from modelport.errors import UnknownOptionError
from modelport.options import LoadOptions


@pytest.mark.parametrize(
    ("typed", "meant"), [("dtyp", "dtype"), ("max_len", "max_model_len"), ("trust_remote_cod", "trust_remote_code")]
)
def test_a_misspelt_option_names_the_closest_valid_one(typed, meant):
    with pytest.raises(UnknownOptionError) as caught:
        LoadOptions.from_kwargs(**{typed: 1})
    assert str(caught.value).startswith(f"unknown option {typed!r} (did you mean {meant!r}?); valid options: ")
    assert caught.value.option == typed and "revision" in caught.value.valid


def test_a_name_close_to_none_lists_the_valid_ones_alone():
    with pytest.raises(UnknownOptionError) as caught:
        LoadOptions.from_kwargs(zzzz=1)
    assert str(caught.value).startswith("unknown option 'zzzz'; valid options: code_revision, config_format, ")
