"""The CLI's "it was tried as a repository id" note is for bare names only, not a plugin's own scheme.

Before, a plugin that owns ``shelf:NAME`` (the hook reference's example) and raised
``ReferenceNotFoundError`` for a missing name got a second line claiming the reference
had been tried as a repository id, with a path ``.../shelf:nope`` nobody typed.
"""

from __future__ import annotations

from pathlib import Path

from modelport import hookimpl
from modelport.cli import main
from modelport.errors import ReferenceNotFoundError
from modelport.testing import registered_plugin


class Shelf:
    @hookimpl
    def modelport_classify_reference(self, reference):
        if reference.startswith("shelf:"):
            raise ReferenceNotFoundError(reference, "no folder /srv/models/nope on the model shelf")
        return None


class Hub:
    @hookimpl
    def modelport_classify_reference(self, reference):
        raise ReferenceNotFoundError(reference, "no such repository on the hub")


def test_a_plugin_scheme_not_found_gets_its_plugins_message_alone(modelport_host, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with registered_plugin(Shelf(), "shelf", host=modelport_host):
        assert main(["inspect", "shelf:nope"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "modelport: error: model reference 'shelf:nope' was not found: no folder /srv/models/nope on the model shelf"
    ]


def test_a_bare_name_and_an_org_repo_quant_still_get_the_note(modelport_host, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with registered_plugin(Hub(), "hub", host=modelport_host):
        for reference in ("nowhere", "org/repo:Q4_K_M"):
            assert main(["inspect", reference]) == 1
            lines = capsys.readouterr().err.splitlines()
            assert lines[-1] == (
                "modelport: note: it was tried as a repository id; there is no such file or folder here either: "
                f"{Path(tmp_path, reference).resolve()}"
            )
