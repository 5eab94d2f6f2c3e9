"""A tiny random causal LM (2 layers, width 32) saved as a local Hugging Face directory, for fast LLM tests.

Its tokenizer is a byte-level BPE fitted on a few sentences (any text tokenizes; no unknown tokens) with a
ChatML chat template, `<|im_end|>` as end of sequence - the layout of SmolLM2's, the real model's.
"""

from __future__ import annotations

from pathlib import Path

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# weights 10x the usual scale: with the output layer tied to the (frozen, under LoRA) embeddings and a final norm,
# a width-32 model at the usual 0.02 cannot make logits large enough to learn anything with adapters alone
INIT = 0.2
CORPUS = [
    "Classify the sentiment of this text: I loved the film, it was great.",
    "positive negative neutral",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "What is two plus two? Four. Translate to French: cat -> chat.",
    "hello world, this is a tiny language model for tests.",
]


def make_tiny_llm(directory: Path, arch: str = "llama", seed: int = 0) -> Path:
    """Save a random `arch` ('llama' or 'gpt2') causal LM with its tokenizer into `directory`; returns it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=eos, pad_token_id=eos,
                             initializer_range=INIT)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                            bos_token_id=1, eos_token_id=eos, pad_token_id=eos, initializer_range=INIT)
        model = GPT2LMHeadModel(config)
    directory = Path(directory)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
