"""``modelport.LLM``: load a model and generate, with vLLM's offline API."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from modelport.devices import resolve_device
from modelport.distributed.driver import ShardedModel, load_sharded
from modelport.errors import ExecutorError, InvalidOptionError, TokenizerError
from modelport.executor import ExecutorSettings
from modelport.outputs import RequestOutput
from modelport.pipeline import LoadedModel, load
from modelport.plugins import PluginHost, get_host
from modelport.sampling import SamplingParams

Prompt = str | Sequence[int] | Mapping[str, Any]


class LLM:
    """A loaded model with an executor, for offline batched generation.

    Args:
        model: any reference ``modelport.load`` accepts.
        host: the plugin host (default: the process-wide one).
        max_num_seqs: sequences run at once at most.
        max_num_batched_tokens: tokens in one forward at most.
        block_size: tokens per KV cache block.
        kv_cache_memory: bytes the KV cache may take (on the CPU).
        gpu_memory_utilization: share of a GPU's memory the executor may use (weights, activations, KV cache).
        enforce_eager: capture no CUDA graphs: every step runs eagerly (GPU executors).
        **options: :class:`~modelport.LoadOptions` fields (``dtype``, ``device``, ``revision``...).
    """

    def __init__(
        self,
        model: str,
        *,
        host: PluginHost | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        block_size: int = 16,
        kv_cache_memory: int = 1 << 30,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        **options: Any,
    ) -> None:
        self.host = host or get_host()
        device = options.get("device", "cpu")
        if isinstance(device, str):  # a bad value is the options' error, raised by load()
            # Checked before loading: no point reading weights that nothing can run.
            options["device"], _ = resolve_device(device, self.host.registry, need_executor=True)
        if options.get("tensor_parallel_size", 1) != 1:
            # Ranks 1..N-1 start through the distributed backend; this process is rank 0 (the driver).
            self.loaded: LoadedModel = load_sharded(model, self.host, options)
        else:
            self.loaded = load(model, host=self.host, **options)
        settings = ExecutorSettings(
            max_num_seqs, max_num_batched_tokens, block_size, kv_cache_memory, gpu_memory_utilization, enforce_eager
        )
        resolved = self.loaded.resolved
        answer = self.host.call_first(
            "modelport_create_executor",
            device=resolved.options.device,
            model=self.loaded.model,
            options=resolved.options,
            loaded=self.loaded,
            settings=settings,
        )
        if answer.value is None:
            raise ExecutorError(
                f"no installed executor drives device {resolved.options.device!r} "
                f"(registered: {', '.join(self.host.registry.names('executor')) or 'none'})"
            )
        self.executor = answer.value
        self.loaded.trace.record(
            "executor", answer.plugin or "", type(self.executor).__name__, answer.reason, answer.seconds, answer.asked
        )

    def close(self) -> None:
        """Stop the other ranks of a tensor-parallel model (idempotent); also done on garbage collection and at exit.

        Nothing to do for a model in one process. ``with LLM(...) as llm:`` closes at the end of the block.
        """
        if isinstance(self.loaded.model, ShardedModel):
            self.loaded.model.close()

    def __enter__(self) -> LLM:
        """The LLM itself; :meth:`close` runs when the block ends."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close (see :meth:`close`)."""
        self.close()

    def get_tokenizer(self) -> Any:
        """The tokenizer (``None`` with ``skip_tokenizer_init``)."""
        return self.loaded.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt together; one result per prompt, in order.

        A prompt is text, a list of token ids, or ``{"prompt_token_ids": [...]}``.
        A request that cannot run fails alone: its result has ``error`` set and
        ``finish_reason == "error"``.
        """
        batch: list[Prompt] = [prompts] if _is_single(prompts) else list(prompts)  # type: ignore[list-item, arg-type]
        results: list[RequestOutput] = self.executor.generate([_prompt(p) for p in batch], sampling_params)
        return results

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[str]:
        """Generate for one prompt, yielding text pieces as they are settled."""
        yield from self.executor.stream(_prompt(prompt), sampling_params)

    def chat(
        self,
        messages: Sequence[Mapping[str, str]] | Sequence[Sequence[Mapping[str, str]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or several, through the tokenizer's chat template.

        Raises:
            TokenizerError: the tokenizer has no chat template.
        """
        conversations = [messages] if messages and isinstance(messages[0], Mapping) else list(messages)
        prompts = [self.chat_prompt(c, add_generation_prompt=add_generation_prompt) for c in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, sampling_params)

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """The prompt token ids of one conversation under the chat template."""
        tokenizer = self.loaded.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            location = self.loaded.resolved.source.location
            raise TokenizerError(location, "the tokenizer has no chat template; use generate() with plain prompts")
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, tokenize=True)
        if isinstance(ids, Mapping):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]


def _is_single(prompts: Any) -> bool:
    if isinstance(prompts, (str, Mapping)):
        return True
    return bool(prompts) and all(isinstance(t, int) for t in prompts)


def _prompt(prompt: Prompt) -> str | list[int]:
    """Text or token ids from one prompt; a malformed prompt is an :class:`InvalidOptionError`."""
    if isinstance(prompt, Mapping):
        if "prompt_token_ids" in prompt:
            return _token_ids("prompt_token_ids", prompt["prompt_token_ids"])
        if isinstance(prompt.get("prompt"), str):
            return str(prompt["prompt"])
        raise InvalidOptionError(
            "prompt", prompt, detail='a prompt mapping holds "prompt" (text) or "prompt_token_ids" (token ids)'
        )
    if isinstance(prompt, str):
        return prompt
    return _token_ids("prompt", prompt)


def _token_ids(field: str, value: Any) -> list[int]:
    # Integers of any kind pass (numpy's, a torch tensor's items: operator.index); "7", 7.5 and
    # True would otherwise turn into ids silently.
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidOptionError(field, value, detail="token ids are a list of integers")
    ids: list[int] = []
    for token in value:
        try:
            if isinstance(token, bool):
                raise TypeError(token)
            ids.append(operator.index(token))
        except TypeError:
            raise InvalidOptionError(field, value, detail=f"token ids are integers, not {token!r}") from None
    return ids
