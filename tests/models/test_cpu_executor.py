"""The CPU executor end to end: native Llama built by the kit, compared with transformers' generate."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("modelport_hf", reason="the executor tests read kit-made Hugging Face folders")

import modelport
from modelport import SamplingParams
from modelport.errors import ExecutorError
from modelport.executor import CPUExecutor, ExecutorSettings
from modelport.testing import make_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=12)
PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "It was the best of times"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("executor") / "llama", "llama", max_position_embeddings=128)


@pytest.fixture(scope="module")
def reference(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture
def llm(model_dir):
    return modelport.LLM(str(model_dir), dtype="float32", model_impl="native")


def _expected(reference, tokenizer, prompt, n):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = reference.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def _fresh(llm, **settings):
    loaded = llm.loaded
    return CPUExecutor(
        loaded.model,
        loaded.tokenizer,
        max_model_len=loaded.resolved.max_model_len,
        vocab_size=loaded.resolved.facts.vocab_size,
        settings=ExecutorSettings(**settings),
    )


def test_batched_greedy_equals_transformers_generate(llm, reference):
    results = llm.generate(PROMPTS, GREEDY)
    tokenizer = llm.get_tokenizer()
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.outputs[0].token_ids == _expected(reference, tokenizer, prompt, 12)
        assert result.outputs[0].finish_reason == "length"
        assert result.prompt == prompt
        assert result.prompt_token_ids == tokenizer(prompt)["input_ids"]
        assert result.outputs[0].text == tokenizer.decode(result.outputs[0].token_ids, skip_special_tokens=True)


def test_requests_join_and_leave_between_steps(llm, reference):
    executor = _fresh(llm)
    tokenizer = llm.get_tokenizer()
    short = executor.add_request(PROMPTS[0], SamplingParams(temperature=0, max_tokens=3))
    long_ = executor.add_request(PROMPTS[1], SamplingParams(temperature=0, max_tokens=10))
    finished = {}
    late = None
    while executor.has_unfinished():
        for report in executor.step():
            if report.finished:
                finished[report.request_id] = report
        if executor.steps == 2 and late is None:
            late = executor.add_request(PROMPTS[2], SamplingParams(temperature=0, max_tokens=6))
            assert len(executor.running) == 2  # the late one waits until the next step admits it
    assert finished[short].outputs[0].token_ids == _expected(reference, tokenizer, PROMPTS[0], 3)
    assert finished[long_].outputs[0].token_ids == _expected(reference, tokenizer, PROMPTS[1], 10)
    assert finished[late].outputs[0].token_ids == _expected(reference, tokenizer, PROMPTS[2], 6)
    assert executor.allocator.num_free == executor.allocator.num_blocks  # every block came back


def test_chunked_prefill_and_preemption_keep_outputs_exact(llm, reference):
    tokenizer = llm.get_tokenizer()
    # 6 tokens a step forces prompts through in chunks; 6 blocks of 4 tokens cannot hold all three
    # sequences at full length, so some are preempted and recomputed.
    executor = _fresh(llm, max_num_batched_tokens=6, block_size=4, kv_cache_memory=1)
    executor.allocator = type(executor.allocator)(12)
    executor.kv_cache = llm.loaded.model.new_kv_cache(12, 4)
    results = executor.generate(PROMPTS, GREEDY)
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.outputs[0].token_ids == _expected(reference, tokenizer, prompt, 12)


def test_seeded_sampling_does_not_depend_on_its_neighbours(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=8)
    alone = llm.generate(PROMPTS[0], params)[0].outputs[0].token_ids
    crowded = llm.generate(
        [PROMPTS[1], PROMPTS[0], PROMPTS[2]], [SamplingParams(temperature=1.0), params, SamplingParams(temperature=0.7)]
    )
    assert crowded[1].outputs[0].token_ids == alone
    other_seed = llm.generate(PROMPTS[0], SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=8))
    assert other_seed[0].outputs[0].token_ids != alone


def test_stop_strings_end_the_output_and_are_excluded(llm):
    full = llm.generate(PROMPTS[1], GREEDY)[0].outputs[0].text
    stop = full[3:6]
    result = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=12, stop=[stop]))[0].outputs[0]
    assert result.text == full[: full.index(stop)]
    assert (result.finish_reason, result.stop_reason) == ("stop", stop)


def test_stop_token_ids_end_the_output_and_stay_in_token_ids(llm):
    full = llm.generate(PROMPTS[2], GREEDY)[0].outputs[0]
    target = full.token_ids[4]
    result = llm.generate(PROMPTS[2], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[target]))
    out = result[0].outputs[0]
    first = full.token_ids.index(target)
    assert out.token_ids == full.token_ids[: first + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", target)
    assert out.text == llm.get_tokenizer().decode(full.token_ids[:first], skip_special_tokens=True)


def test_eos_ends_the_output_unless_ignored(llm):
    full = llm.generate(PROMPTS[0], GREEDY)[0].outputs[0]
    executor = _fresh(llm)
    executor.eos_token_ids = frozenset({full.token_ids[2]})
    first = full.token_ids.index(full.token_ids[2])
    stopped = executor.generate([PROMPTS[0]], GREEDY)[0].outputs[0]
    assert stopped.token_ids == full.token_ids[: first + 1] and stopped.finish_reason == "stop"
    ignoring = executor.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert ignoring[0].outputs[0].token_ids == full.token_ids


def test_logprobs_are_the_models_log_softmax(llm, reference):
    result = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=2, logprobs=3))[0].outputs[0]
    ids = llm.get_tokenizer()(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = torch.log_softmax(reference(ids).logits[0, -1], dim=-1)
    first = result.logprobs[0]
    top3 = torch.topk(expected, 3).indices.tolist()
    assert set(first) == set(top3) | {result.token_ids[0]}
    for token_id, entry in first.items():
        assert entry.logprob == pytest.approx(float(expected[token_id]), abs=1e-4)
    assert first[top3[0]].rank == 1
    assert result.cumulative_logprob == pytest.approx(
        sum(lp[t].logprob for lp, t in zip(result.logprobs, result.token_ids, strict=True)), abs=1e-6
    )


def test_repetition_penalty_changes_greedy_choices(llm):
    plain = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=12))[0].outputs[0].token_ids
    penalised = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=12, repetition_penalty=5.0))
    assert penalised[0].outputs[0].token_ids != plain
    assert len(set(penalised[0].outputs[0].token_ids)) >= len(set(plain))


def test_a_bad_request_fails_alone(llm, reference):
    results = llm.generate(["x " * 200, PROMPTS[0], [10**6]], GREEDY)
    assert results[0].error.startswith("the prompt has") and "max_model_len is 128" in results[0].error
    assert results[0].outputs[0].finish_reason == "error"
    assert results[2].error == "prompt token ids outside the vocabulary (size 384): [1000000]"
    assert results[1].error is None
    assert results[1].outputs[0].token_ids == _expected(reference, llm.get_tokenizer(), PROMPTS[0], 12)


def test_streamed_pieces_add_up_to_the_whole_text(llm):
    pieces = list(llm.stream(PROMPTS[1], GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.generate(PROMPTS[1], GREEDY)[0].outputs[0].text
    with pytest.raises(ExecutorError, match="failed: the prompt has"):
        list(llm.stream("x " * 200, GREEDY))


def test_chat_goes_through_the_chat_template(llm):
    messages = [{"role": "user", "content": "Hello world"}]
    ids = llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    result = llm.chat(messages, GREEDY)[0]
    assert result.prompt_token_ids == list(ids)
    assert result.outputs[0].token_ids == llm.generate({"prompt_token_ids": list(ids)}, GREEDY)[0].outputs[0].token_ids


def test_executor_hooks_pick_the_cpu_executor(llm):
    assert type(llm.executor).__name__ == "CPUExecutor"
    step = llm.loaded.trace.find("executor")[0]
    assert step.plugin == "modelport.builtin.cpu"
    assert "modelport.builtin.cpu" in [e.plugin for e in llm.host.registry.of_kind("executor")]


def test_unknown_device_has_no_executor(model_dir):
    # Other executors (cuda, say) may be registered beside core's cpu one.
    with pytest.raises(ExecutorError, match=r"no installed executor drives device 'tpu' \(registered: [^)]*\bcpu\b"):
        modelport.LLM(str(model_dir), dtype="float32", device="tpu", load_format="dummy")


def test_cli_generate_streams_the_completion(model_dir, llm):
    expected = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].text
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelport",
            "generate",
            str(model_dir),
            PROMPTS[0],
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"


def test_cli_chat_answers_each_line(model_dir, llm):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelport",
            "chat",
            str(model_dir),
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--dtype",
            "float32",
        ],
        input="Hello world\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    reply = llm.chat([{"role": "user", "content": "Hello world"}], SamplingParams(temperature=0, max_tokens=4))
    assert proc.stdout == f"model> {reply[0].outputs[0].text}\n"


def test_a_plugin_can_take_over_the_cpu_executor(model_dir, modelport_host):
    """modelport_register_executors names device types; modelport_create_executor builds one (core's is trylast)."""

    class Custom:
        def __init__(self, loaded, settings):
            self.loaded, self.settings = loaded, settings

    class TakesCpu:
        @modelport.hookimpl
        def modelport_register_executors(self, register):
            register("cpu", "a plugin's own CPU executor")

        @modelport.hookimpl
        def modelport_create_executor(self, device, loaded, settings):
            return Custom(loaded, settings) if device == "cpu" else None

    with modelport_host.plugin(TakesCpu(), "takes-cpu"):
        llm = modelport.LLM(str(model_dir), dtype="float32", max_num_seqs=3)
        registered = {e.plugin for e in modelport_host.registry.of_kind("executor")}
    assert {"takes-cpu", "modelport.builtin.cpu"} <= registered  # beside any other device's executor
    assert isinstance(llm.executor, Custom)
    assert llm.executor.settings.max_num_seqs == 3
    assert llm.executor.loaded.resolved.architecture.name == "LlamaForCausalLM"
    assert llm.loaded.trace.find("executor")[0].plugin == "takes-cpu"


def test_without_a_tokenizer_token_ids_work_and_text_fails_alone(model_dir, llm, reference):
    bare = modelport.LLM(str(model_dir), dtype="float32", skip_tokenizer_init=True)
    ids = llm.get_tokenizer()(PROMPTS[0])["input_ids"]
    text_result, ids_result = bare.generate([PROMPTS[0], ids], GREEDY)
    assert "need a tokenizer" in text_result.error and "skip_tokenizer_init=True" in text_result.error
    assert ids_result.outputs[0].token_ids == _expected(reference, llm.get_tokenizer(), PROMPTS[0], 12)
    assert ids_result.outputs[0].text == ""


def test_executor_settings_are_validated_and_cpu_indexes_are_accepted(model_dir):
    from modelport.errors import InvalidOptionError

    for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory"):
        with pytest.raises(InvalidOptionError, match=f"option {name!r}"):
            ExecutorSettings(**{name: 0})
    llm = modelport.LLM(str(model_dir), dtype="float32", device="cpu:0", load_format="dummy")
    assert type(llm.executor).__name__ == "CPUExecutor"


def test_bfloat16_packed_weights_generate_what_the_dense_weights_do(model_dir, monkeypatch):
    """In bfloat16 the linear layers read oneDNN-packed, stacked weights; tokens and logprobs are unchanged."""
    import modelport.models.linear as linear_module

    if not linear_module.packed_linear_works(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bfloat16 weights on this CPU")
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=2)
    runs, llms = [], []
    for rows in (linear_module.PACKED_MAX_ROWS, -1):  # packed (the default), then dense F.linear
        monkeypatch.setattr(linear_module, "PACKED_MAX_ROWS", rows)
        llms.append(modelport.LLM(str(model_dir), dtype="bfloat16", model_impl="native"))
        runs.append([r.outputs[0] for r in llms[-1].generate(PROMPTS, params)])
    packed, dense = runs
    layer = llms[0].loaded.model.model.layers[0]
    attention, mlp = layer.self_attn, layer.mlp
    stacked = {tuple(entry.sizes) for entry in linear_module._packed.values()}
    assert {(attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features)} <= stacked
    assert {(mlp.gate_proj.out_features, mlp.up_proj.out_features)} <= stacked  # the first run packed them
    for a, b in zip(packed, dense, strict=True):
        assert a.token_ids == b.token_ids
        assert a.cumulative_logprob == pytest.approx(b.cumulative_logprob, abs=1e-6)
