"""What a reference that is not found says: a trailing slash is a path; modelport-hf is advised only when missing.

Before, ``my-modle/`` (a typo'd folder) was not taken for a path: every plugin passed
on it and the error advised "install modelport-hf for Hugging Face ids", even with
modelport-hf installed and asked.
"""

from __future__ import annotations

import pytest

import modelport
from modelport import hookimpl
from modelport.errors import ReferenceNotFoundError
from modelport.testing import registered_plugin


class Passes:
    @hookimpl
    def modelport_classify_reference(self, reference):
        return None


def test_a_missing_folder_with_a_trailing_slash_is_no_such_folder(modelport_host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with registered_plugin(Passes(), "modelport-hf", host=modelport_host):
        with pytest.raises(ReferenceNotFoundError) as caught:
            modelport.resolve("my-modle/")
    assert (
        str(caught.value)
        == f"model reference 'my-modle/' was not found: no such file or folder: {tmp_path / 'my-modle'}"
    )


def test_an_existing_folder_with_a_trailing_slash_is_still_local(modelport_host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    with registered_plugin(Passes(), "modelport-hf", host=modelport_host):
        with pytest.raises(modelport.errors.ModelportError) as caught:
            modelport.resolve("here/")
    assert not isinstance(caught.value, ReferenceNotFoundError)  # found; it is the format that is missing


def test_modelport_hf_is_advised_only_where_it_was_not_asked(modelport_host):
    with pytest.raises(ReferenceNotFoundError) as without:
        modelport.resolve("no such id")
    assert str(without.value).endswith("install modelport-hf for Hugging Face ids)")

    with registered_plugin(Passes(), "modelport-hf", host=modelport_host):
        with pytest.raises(ReferenceNotFoundError) as caught:
            modelport.resolve("no such id")
    message = str(caught.value)
    assert "install modelport-hf" not in message
    assert message.startswith("model reference 'no such id' was not found: it is not a local path and no installed")
    assert "modelport-hf" in message  # among the plugins asked
