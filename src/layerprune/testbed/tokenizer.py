"""The testbed tokenizer: a small byte-level BPE trained on the testbed corpus, digits kept single.

Single-digit tokens keep arithmetic learnable (every number is spelled digit by digit); the chat
markers are special tokens and `<|end|>` is EOS, so generation and SGR stop at the end of a turn.
Saved with `save_pretrained`, it loads with `AutoTokenizer.from_pretrained` and carries the chat template.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from layerprune.testbed.corpus import ASSISTANT, CHAT_TEMPLATE, END, SYSTEM, USER, tokenizer_sample

PAD = "<|pad|>"
SPECIAL = [PAD, END, SYSTEM, USER, ASSISTANT]
VOCAB_SIZE = 512
MAX_LENGTH = 256


def build_tokenizer(seed: int, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_sample(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token=PAD,
                                   model_max_length=MAX_LENGTH, clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast
