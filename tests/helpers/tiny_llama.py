"""A tiny random Llama with a real (freshly trained) byte-level BPE tokenizer: built in about a
second, so exporter and quantizer tests run the real code paths without the 135M model."""

from __future__ import annotations

from pathlib import Path

TEXTS = [
    "Vorla has 3 red lanterns and 5 blue lanterns. How many lanterns does Vorla have in total?",
    "Kazen has 7 green marbles and 2 white marbles. Answer: 9",
    "Read the passage and answer the question. Think step by step.",
] * 20


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
                          "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    return fast


def tiny_llama(tokenizer, *, seed: int = 0, tied: bool = True, scale: float = 0.2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger than the init default, so logits are far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, scale)
    return model


def save_tiny(folder: Path, *, seed: int = 0) -> Path:
    tok = tiny_tokenizer()
    model = tiny_llama(tok, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
