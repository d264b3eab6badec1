"""Weights of every load format reach the Transformers backend: safetensors, .bin (zip and legacy), dummy."""

from __future__ import annotations

import os

import pytest
import torch

import modelport

pytest.importorskip("modelport_hf", reason="these tests read checkpoints through modelport-hf")


def _load(folder, **options):
    return modelport.load(str(folder), model_impl="transformers", skip_tokenizer_init=True, dtype="float32", **options)


@pytest.mark.parametrize("zip_format", [True, False])
def test_bin_checkpoints_load_in_both_torch_save_formats(tiny_model, zip_format):
    from safetensors.torch import load_file

    folder = tiny_model(tokenizer=False)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    loaded = _load(folder)
    assert loaded.resolved.weight_files.load_format == "pt"
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    for name, tensor in state.items():
        assert torch.equal(loaded.model.module.get_parameter(name), tensor), name


@pytest.mark.parametrize("load_format", ["auto", "safetensors", "pt", "dummy"])
def test_every_load_format_gives_a_model_that_runs(tiny_model, load_format):
    folder = tiny_model(tokenizer=False)
    if load_format == "pt":
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    loaded = _load(folder, load_format=load_format)
    report = loaded.weights
    if load_format == "dummy":
        assert report.loaded == () and len(report.initialised) == len(loaded.model.module.state_dict())
    else:
        assert len(report.loaded) == len(loaded.model.module.state_dict()) and report.initialised == ()
    assert report.missing == () and report.unexpected == ()
    logits = loaded.model.forward(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 384) and bool(torch.isfinite(logits).all())


def test_safetensors_files_are_announced_to_the_kernel_before_reading(tiny_model):
    from modelport_hf.weights import prefetch

    folder = tiny_model(tokenizer=False)
    assert prefetch(folder / "model.safetensors") is hasattr(os, "posix_fadvise")
    assert prefetch(folder / "no-such-file.safetensors") is False
