"""A tiny, randomly initialized Llama and a tiny trained BPE tokenizer with a ChatML template:
real transformers components, small enough that a training step takes milliseconds."""

from __future__ import annotations

import json

from flows.ingest import demo

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [r["passage"] + " " + r["question"] + " Answer: " + r["answer"]
            for r in demo.generate(200, seed=1)]
    text += ["[label] So the total is 12.\nAnswer: 12", "system user assistant"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[
        "<unk>", "<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = CHATML
    return fast


def tiny_llama(tokenizer, seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)
    return LlamaForCausalLM(cfg)


def save_tiny_base(folder, tokenizer=None, *, seed: int = 0, layers: int = 2):
    """A tiny Llama and its tokenizer saved as a Hugging Face folder: the student base of the
    stage-flow tests."""
    tokenizer = tokenizer or tiny_tokenizer()
    tiny_llama(tokenizer, seed=seed, layers=layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_rows(n: int = 8, seed: int = 3) -> list[dict]:
    """Rows with the curated 'train' columns the student reads (docs/contracts.md)."""
    rows = []
    for i, r in enumerate(demo.generate(n, seed=seed)):
        messages = [{"role": "system", "content": "Solve the problem."},
                    {"role": "user", "content": f"{r['passage']}\n{r['question']}"}]
        rows.append({"id": f"g{i}", "source_id": r["id"] if "id" in r else f"c{i}",
                     "messages": json.dumps(messages), "passage": r["passage"],
                     "question": r["question"], "gold_answer": r["answer"],
                     "rationale": f"Adding the counts gives {r['answer']}.",
                     "answer": r["answer"], "logprobs": None, "keep": True,
                     "curriculum_stage": 0, "order": i})
    return rows
