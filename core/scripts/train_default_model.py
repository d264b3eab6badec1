"""Train modelport's embedded default model on a public-domain text.

The model ships at core/modelport/data/default-model: a small Llama that the
README's demo loads with no download. This script makes it from scratch,
deterministically for a given machine: a byte-level BPE tokenizer trained with
the ``tokenizers`` library, then a ``transformers`` LlamaForCausalLM trained
with plain PyTorch, saved with ``save_pretrained`` in bfloat16 (well under 10 MB).

    python core/scripts/train_default_model.py --text ../shared/corpus/text/tinyshakespeare.txt

The text is not shipped; the model trained from it is the project's own.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "modelport" / "data" / "default-model"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}:\n{{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer over ``text``, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def main() -> None:
    """Train the tokenizer and the model, save both, print a greedy sample."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=Path("../shared/corpus/text/tinyshakespeare.txt"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = args.text.read_text(encoding="utf-8")
    tokenizer = train_tokenizer(text, args.vocab_size)
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    split = int(len(ids) * 0.95)
    train, held_out = ids[:split], ids[split:]
    print(f"{len(text)} characters -> {len(ids)} tokens (vocabulary {len(tokenizer)})")

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.hidden_size * 8 // 3 // 32 * 32,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden_size // 48,
        num_key_value_heads=max(1, args.hidden_size // 96),
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(config)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(args.seed)

    def batch(source: torch.Tensor) -> torch.Tensor:
        starts = torch.randint(0, len(source) - args.seq_len - 1, (args.batch,), generator=generator)
        return torch.stack([source[s : s + args.seq_len + 1] for s in starts.tolist()])

    start = time.time()
    model.train()
    for step in range(1, args.steps + 1):
        warmup = 50
        lr = args.lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        for group in optimizer.param_groups:
            group["lr"] = max(lr, args.lr * 0.05)
        chunk = batch(train)
        loss = model(input_ids=chunk[:, :-1], labels=chunk[:, :-1].clone()).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                held = batch(held_out)
                val = model(input_ids=held[:, :-1], labels=held[:, :-1].clone()).loss.item()
            model.train()
            print(f"step {step}: loss {loss.item():.3f}, held-out {val:.3f}, {time.time() - start:.0f} s", flush=True)

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.iterdir():
        stale.unlink()
    model.to(torch.bfloat16).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "TRAINING.json").write_text(
        json.dumps(
            {
                "text": args.text.name,
                "steps": args.steps,
                "batch": args.batch,
                "seq_len": args.seq_len,
                "lr": args.lr,
                "seed": args.seed,
                "final_held_out_loss": round(val, 4),
                "torch": torch.__version__,
            },
            indent=2,
        )
        + "\n"
    )
    prompt = tokenizer("ROMEO:\n", return_tensors="pt").input_ids
    sample = model.generate(prompt, max_new_tokens=40, do_sample=False)
    print(tokenizer.decode(sample[0]))


if __name__ == "__main__":
    main()
