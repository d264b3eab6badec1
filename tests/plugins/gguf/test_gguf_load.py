"""Kit models written to GGUF by gguf-py load through modelport with the original's logits, and generate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import modelport
from modelport.errors import ReferenceNotFoundError, UnsupportedArchitectureError, WeightsMissingError
from modelport.models.protocol import SequenceBatch

TOKENS = torch.tensor([1, 5, 9, 33, 70, 100, 7, 3, 200, 17])
#: Largest logit difference allowed against the original float32 model (logits of magnitude ~0.5).
TOLERANCE = {"F32": 1e-5, "F16": 2e-3, "BF16": 1e-2, "Q8_0": 3e-2, "Q5_1": 0.15, "Q4_0": 0.3}


def native_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    cache = model.new_kv_cache(8, 4)
    batch = SequenceBatch(tokens, torch.arange(len(tokens)), [len(tokens)], [0], [[0, 1, 2]], True)
    with torch.no_grad():
        return model.forward(batch, cache)


def original_logits(gguf_path, tokens: torch.Tensor) -> torch.Tensor:
    import transformers

    folder = gguf_path.parent / f"{gguf_path.stem}-hf"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(tokens[None]).logits[0]


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("ggml_type", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_1"])
def test_logits_equal_the_original_within_the_type_tolerance(kit_gguf, architecture, ggml_type):
    path = kit_gguf(ggml_type, architecture)
    loaded = modelport.load(str(path), dtype="float32", skip_tokenizer_init=True)
    assert (loaded.weights.missing, loaded.weights.unexpected) == ((), ())
    got, want = native_logits(loaded.model, TOKENS), original_logits(path, TOKENS)
    assert (got - want).abs().max().item() <= TOLERANCE[ggml_type]
    if ggml_type != "F32":
        assert not torch.equal(got, want)  # the type's rounding is really there


def test_loaded_weights_equal_gguf_py_dequantisation_tensor_by_tensor(kit_gguf):
    """End to end, every tensor is gguf-py's own dequantisation, renamed and un-permuted."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from modelport.testing.gguf_files import gguf_tensor_name, permute_rotary

    path = kit_gguf("Q4_0")
    loaded = modelport.load(str(path), dtype="float32", skip_tokenizer_init=True)
    reader = {t.name: t for t in GGUFReader(path).tensors}
    for name, param in loaded.model.named_parameters():
        tensor = reader[gguf_tensor_name(name)]
        want = dequantize(tensor.data, tensor.tensor_type).reshape(param.shape)
        heads = {"q_proj.weight": 4, "k_proj.weight": 2}.get(name[-13:])
        if heads:
            assert not np.array_equal(param.detach().numpy(), want)  # stored permuted...
            assert np.array_equal(permute_rotary(param.detach().numpy(), heads), want), name  # ...and undone
            continue
        assert np.array_equal(param.detach().numpy(), want), name


def test_the_trace_says_which_table_answered_and_what_was_read(kit_gguf):
    resolved = modelport.resolve(str(kit_gguf("Q8_0")))
    steps = {step.step: step for step in resolved.trace.steps}
    assert steps["source"].plugin == "modelport-gguf" and steps["format"].decision == "gguf"
    assert "the 'llama' table registered by modelport-gguf" in steps["config"].reason
    assert resolved.weight_files.load_format == "gguf" and resolved.weight_files.files == (kit_gguf("Q8_0").name,)
    config = resolved.hf_config
    assert (config.model_type, config.architectures, config.hidden_size, config.num_key_value_heads) == (
        "llama",
        ["LlamaForCausalLM"],
        64,
        2,
    )
    assert (config.num_hidden_layers, config.intermediate_size, config.max_position_embeddings) == (2, 128, 256)
    assert config.tie_word_embeddings is False and config.bos_token_id == 1 and config.eos_token_id == 2


def test_a_kit_gguf_generates_through_the_cpu_executor(kit_gguf):
    path = kit_gguf("F32")
    llm = modelport.LLM(str(path), dtype="float32", skip_tokenizer_init=True)
    params = modelport.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": TOKENS.tolist()}], params)[0].outputs[0]
    # The original model's greedy continuation, one token at a time.
    tokens = TOKENS.clone()
    want = []
    for _ in range(6):
        nxt = int(original_logits(path, tokens)[-1].argmax())
        want.append(nxt)
        tokens = torch.cat([tokens, torch.tensor([nxt])])
    assert list(out.token_ids) == want


def test_a_split_model_loads_as_one(kit_gguf, tmp_path):
    from modelport.testing.gguf_files import write_gguf

    single = kit_gguf("Q8_0")
    first = write_gguf(single.parent / f"{single.stem}-hf", tmp_path / "split.gguf", "Q8_0", split_max_tensors=8)
    parts = sorted(p.name for p in tmp_path.glob("split-*.gguf"))
    assert first.name == "split-00001-of-00003.gguf" and len(parts) == 3
    loaded = modelport.load(str(first), dtype="float32", skip_tokenizer_init=True)
    assert loaded.resolved.weight_files.files == tuple(parts)
    assert (loaded.weights.missing, loaded.weights.unexpected) == ((), ())
    assert torch.equal(native_logits(loaded.model, TOKENS), native_logits(_load(single).model, TOKENS))
    (tmp_path / parts[1]).unlink()
    with pytest.raises(WeightsMissingError, match="lacks part"):
        modelport.resolve(str(first), skip_tokenizer_init=True)


def _load(path):
    return modelport.load(str(path), dtype="float32", skip_tokenizer_init=True)


def test_a_folder_of_gguf_files_takes_a_quantisation_choice(kit_gguf, tmp_path):
    shutil.copy(kit_gguf("Q8_0"), tmp_path / "model.Q8_0.gguf")
    shutil.copy(kit_gguf("Q4_0"), tmp_path / "model-q4_0.gguf")
    (tmp_path / "README.md").write_text("not a model")
    resolved = modelport.resolve(f"{tmp_path}:q4_0", skip_tokenizer_init=True)
    assert resolved.source.primary_file == "model-q4_0.gguf"
    with pytest.raises(ReferenceNotFoundError, match=r"2 GGUF models \(Q4_0, Q8_0\); choose one with ':QUANT'"):
        modelport.resolve(str(tmp_path), skip_tokenizer_init=True)
    with pytest.raises(ReferenceNotFoundError, match="no GGUF file of quantisation 'Q6_K'; available: Q4_0, Q8_0"):
        modelport.resolve(f"{tmp_path}:Q6_K", skip_tokenizer_init=True)
    (tmp_path / "model.Q8_0.gguf").unlink()
    assert modelport.resolve(str(tmp_path), skip_tokenizer_init=True).source.primary_file == "model-q4_0.gguf"


def test_detection_is_by_magic_not_by_name(kit_gguf, tmp_path):
    renamed = tmp_path / "weights.bin"
    shutil.copy(kit_gguf("F32"), renamed)
    resolved = modelport.resolve(str(renamed), skip_tokenizer_init=True)
    assert resolved.config_format == "gguf" and resolved.weight_files.load_format == "gguf"


def test_a_config_json_beside_the_file_wins(kit_gguf, tmp_path):
    path = tmp_path / "m.gguf"
    shutil.copy(kit_gguf("F32"), path)
    config = json.loads((kit_gguf("F32").parent / f"{kit_gguf('F32').stem}-hf" / "config.json").read_text())
    config["max_position_embeddings"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    resolved = modelport.resolve(str(path), skip_tokenizer_init=True)
    assert resolved.config_format == "hf" and resolved.hf_config.max_position_embeddings == 128
    assert resolved.weight_files.load_format == "gguf"


def test_hf_config_path_wins_over_the_metadata(kit_gguf):
    path = kit_gguf("F32")
    hf_folder = path.parent / f"{path.stem}-hf"
    resolved = modelport.resolve(str(path), hf_config_path=str(hf_folder), skip_tokenizer_init=True)
    assert resolved.config_format == "hf" and resolved.weight_files.files == (path.name,)


def test_an_unsupported_tensor_type_is_a_typed_error_naming_tensor_and_type(tmp_path):
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    from modelport_gguf.weights import UnsupportedTensorTypeError

    path = tmp_path / "q8k.gguf"
    writer = GGUFWriter(path, "llama")
    for key, value in [("block_count", 1), ("embedding_length", 256), ("feed_forward_length", 256)]:
        writer.add_uint32(f"llama.{key}", value)
    writer.add_uint32("llama.attention.head_count", 4)
    writer.add_uint32("llama.context_length", 64)
    # Q8_K is ggml's intermediate type for dot products, which gguf-py cannot dequantise either
    writer.add_tensor("token_embd.weight", np.zeros((32, 292), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q8_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedTensorTypeError, match=r"tensor 'token_embd\.weight' is of ggml type Q8_K") as caught:
        modelport.load(str(path), skip_tokenizer_init=True)
    assert "IQ2_XXS" in str(caught.value) and "TQ2_0" in str(caught.value)  # the supported types are listed


def test_an_unknown_architecture_names_the_registered_tables(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(path, "acme")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError, match=r"acme.*'gemma2'.*modelport_register_gguf_architectures"):
        modelport.resolve(str(path), skip_tokenizer_init=True)


def test_inspect_shows_the_metadata_derived_config(kit_gguf, capsys):
    from modelport.cli import main

    assert main(["inspect", str(kit_gguf("Q8_0")), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    text = json.dumps(data)
    assert '"config_format": "gguf"' in text and '"load_format": "gguf"' in text
    assert main(["inspect", str(kit_gguf("Q8_0"))]) == 0
    out = capsys.readouterr().out
    assert "config format  gguf" in out and "2 layers, hidden 64, 4 heads (2 kv, head_dim 16)" in out


class AcmeTables:
    """A third party teaching modelport-gguf an architecture: llama's table under another name."""

    @modelport.hookimpl
    def modelport_register_gguf_architectures(self, register):
        register("acme", "modelport_gguf.architectures:LLAMA", "Acme: llama's layout")


def test_another_plugin_registers_a_gguf_architecture_table(kit_gguf, tmp_path):
    from modelport.testing import registered_plugin
    from modelport.testing.gguf_files import write_gguf

    source = kit_gguf("F32")
    path = write_gguf(source.parent / f"{source.stem}-hf", tmp_path / "acme.gguf", "F32", gguf_architecture="acme")
    with pytest.raises(UnsupportedArchitectureError, match="acme"):
        modelport.resolve(str(path), skip_tokenizer_init=True)
    with registered_plugin(AcmeTables(), "acme-tables"):
        loaded = modelport.load(str(path), dtype="float32", skip_tokenizer_init=True)
        config_step = next(s for s in loaded.trace.steps if s.step == "config")
        assert "architecture 'acme' through the 'acme' table registered by acme-tables" in config_step.reason
        assert loaded.resolved.hf_config.hidden_size == 64
        assert torch.equal(native_logits(loaded.model, TOKENS), native_logits(_load(source).model, TOKENS))


def test_a_load_imports_no_compiler_machinery(kit_gguf):
    """The native model is built on the meta device without running nn.Embedding's initialiser there.

    torch's meta ``normal_`` goes through ``torch._refs``, which imports ``torch._dynamo``: 1-2 s of a whole
    process, for values the load replaces anyway. A fresh interpreter, since this one may have imported it.
    """
    code = (
        "import json, sys, modelport\n"
        "llm = modelport.load(sys.argv[1], dtype='float32', skip_tokenizer_init=True)\n"
        "assert llm.weights.missing == () and not llm.model.model.embed_tokens.weight.is_meta\n"
        "print(json.dumps(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules)))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "MODELPORT_PLUGINS": "modelport-hf,modelport-gguf",
    }
    result = subprocess.run(
        [sys.executable, "-c", code, str(kit_gguf("Q8_0"))], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_dequantisation_threads_are_governed_and_restored(kit_gguf):
    """Each tensor is dequantised under the executor's ThreadGovernor, which leaves torch's setting as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loaded = modelport.load(str(kit_gguf("Q4_0")), dtype="float32", skip_tokenizer_init=True)
        assert loaded.weights.missing == () and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
