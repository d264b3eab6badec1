"""Results of generation, shaped like vLLM's ``RequestOutput``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Logprob:
    """The log-probability of one candidate token.

    Attributes:
        logprob: natural log of its probability under the model (before sampling filters).
        rank: 1 for the most likely token.
        decoded_token: its text.
    """

    logprob: float
    rank: int
    decoded_token: str


@dataclass
class CompletionOutput:
    """One generated sequence.

    Attributes:
        index: its index among the request's outputs (always 0 here).
        text: the generated text (stop strings excluded).
        token_ids: the generated token ids.
        cumulative_logprob: sum of the chosen tokens' logprobs, when logprobs were asked for.
        logprobs: per generated token, ``{token_id: Logprob}`` of the top candidates and the
            chosen token, when asked for.
        finish_reason: ``None`` while running, then ``stop``, ``length`` or ``error``.
        stop_reason: the stop string or stop token id that ended it, if any.
    """

    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def finished(self) -> bool:
        """Whether generation ended."""
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The result (or, while streaming, the progress) of one request.

    Attributes:
        request_id: the executor's id for it.
        prompt: the prompt text, when it was given as text.
        prompt_token_ids: the prompt's token ids.
        outputs: the generated sequences (one).
        finished: whether the request is done.
        error: why the request failed, when it did (the others go on).
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    error: str | None = None
