"""On the local Hub, a repository holding both layouts downloads only the files of the chosen format."""

from __future__ import annotations

import pytest
import torch

import modelport
from modelport.testing.mistral_files import make_mistral_folder

HF_WEIGHTS = {"model.safetensors"}
HF_TOKENIZER = {"tokenizer.json", "tokenizer_config.json"}
MISTRAL_FILES = {"params.json", "consolidated.safetensors", "consolidated.00.pth", "tekken.json"}


@pytest.fixture
def both_layouts(hub_server, mistral_model):
    """``org/both``: the kit's HF model and its Mistral-native form (safetensors and .pth) in one repository."""
    hf, folder = mistral_model(same_folder=True)
    make_mistral_folder(hf, folder, weights="pth", tokenizer=None)
    hub_server.add_repo("org/both", folder)
    return folder


def _fetched(hub_server):
    return {r.filename for r in hub_server.requests if r.kind == "resolve" and r.method == "GET" and r.status == 200}


def test_auto_downloads_only_the_mistral_files(both_layouts, hub_server):
    loaded = modelport.load("org/both", dtype="float32")
    assert loaded.resolved.config_format == "mistral"
    assert loaded.weights.missing == () and loaded.weights.unexpected == ()
    fetched = _fetched(hub_server)
    # params.json lacks max_position_embeddings, so config.json is read for it, as vLLM reads it.
    assert fetched == {"params.json", "config.json", "tekken.json", "consolidated.safetensors"}
    assert hub_server.downloads("consolidated.safetensors") == 1
    assert loaded.tokenizer.encode("Hello world")[0] == loaded.tokenizer.bos_token_id


def test_with_max_position_embeddings_in_params_json_config_json_is_never_fetched(hub_server, mistral_model):
    _hf, folder = mistral_model(same_folder=True, params={"max_position_embeddings": 256})
    hub_server.add_repo("org/stated", folder)
    modelport.load("org/stated", dtype="float32")
    assert _fetched(hub_server) == {"params.json", "tekken.json", "consolidated.safetensors"}


def test_the_hf_format_downloads_only_the_hf_files(both_layouts, hub_server):
    loaded = modelport.load("org/both", config_format="hf", dtype="float32")
    assert loaded.resolved.config_format == "hf"
    fetched = _fetched(hub_server)
    assert fetched & MISTRAL_FILES == set()
    assert {"config.json", *HF_WEIGHTS, *HF_TOKENIZER} <= fetched


def test_load_format_pt_downloads_only_the_pth(both_layouts, hub_server):
    loaded = modelport.load("org/both", load_format="pt", dtype="float32", skip_tokenizer_init=True)
    assert loaded.resolved.weight_files.files == ("consolidated.00.pth",)
    assert _fetched(hub_server) == {"params.json", "config.json", "consolidated.00.pth"}


def test_the_hub_model_gives_the_logits_of_the_local_hf_folder(both_layouts, hub_server):
    from modelport.models.protocol import SequenceBatch

    prompt = torch.tensor([1, 9, 33, 71, 200])

    def logits(loaded):
        batch = SequenceBatch(prompt, torch.arange(5), [5], [0], [[0, 1]], all_logits=True)
        with torch.no_grad():
            return loaded.model.forward(batch, loaded.model.new_kv_cache(4, 4))

    remote = modelport.load("org/both", dtype="float32", skip_tokenizer_init=True)
    local = modelport.load(str(both_layouts), config_format="hf", dtype="float32", skip_tokenizer_init=True)
    assert remote.resolved.config_format == "mistral" and local.resolved.config_format == "hf"
    assert torch.equal(logits(remote), logits(local))


def test_a_cached_mistral_repository_loads_offline_without_a_network_call(both_layouts, hub_server):
    online = modelport.load("org/both", dtype="float32")
    hub_server.clear_requests()
    with hub_server.forbid_connections() as attempts:
        offline = modelport.load("org/both", dtype="float32", offline=True)
    assert attempts == [] and hub_server.requests == []
    assert offline.resolved.config_format == "mistral" and offline.resolved.tokenizer.mode == "mistral"
    assert offline.resolved.source.revision == online.resolved.source.revision
    assert offline.tokenizer.encode("Hello world") == online.tokenizer.encode("Hello world")
