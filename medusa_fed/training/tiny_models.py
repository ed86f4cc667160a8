"""Tiny random checkpoints (BERT, Llama, GPT-2; hidden 32, 2 layers) for fast tests and demos.

Each is a Hugging Face directory with a word-level tokenizer over a small fixed vocabulary, so
``load_base(ModelSpec(source=str(directory), family=...))`` works offline in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

Architecture = Literal["bert", "llama", "gpt2"]
_WORD_LINES = (
    "good great fine nice love best fun happy bad awful poor hate worst sad dull boring movie",
    "film plot actor story scene music time the a is was it this and not very really but",
)
WORDS = tuple(w for line in _WORD_LINES for w in line.split())
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_model(directory: Path, arch: Architecture = "bert", seed: int = 0) -> Path:
    """Write a tiny random ``arch`` checkpoint and its tokenizer to ``directory``; returns it."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + list(WORDS)
    torch.manual_seed(seed)
    model: torch.nn.Module
    if arch == "bert":
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
        from transformers import BertTokenizerFast  # type: ignore[attr-defined]

        # transformers 5 takes the vocabulary itself (``vocab_file`` is silently ignored there,
        # which left every word [UNK]); a dict works on 4.x and 5.x.
        tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
        model = BertModel(
            BertConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
            )
        )
    else:
        from tokenizers import Tokenizer, models, pre_tokenizers

        core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        tok = PreTrainedTokenizerFast(
            tokenizer_object=core,
            unk_token="[UNK]",
            pad_token="[PAD]",
            eos_token="[SEP]",
            bos_token="[CLS]",
        )
        if arch == "llama":
            model = LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=len(vocab),
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    num_key_value_heads=2,
                    max_position_embeddings=64,
                    pad_token_id=0,
                    bos_token_id=2,
                    eos_token_id=3,
                )
            )
        else:
            model = GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=len(vocab),
                    n_embd=32,
                    n_layer=2,
                    n_head=2,
                    n_positions=64,
                    pad_token_id=0,
                    bos_token_id=2,
                    eos_token_id=3,
                )
            )
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory
