"""The testbed's character-level tokenizer, built as a real Hugging Face tokenizer with a chat template.

Every character is one token (a ``WordLevel`` model over single characters, fed by a pre-tokenizer that
isolates each character); special and control tokens are single added tokens. Saved with
``save_pretrained`` it loads back with ``AutoTokenizer.from_pretrained``.

Chat format (what the testbed models are trained on)::

    <|bos|><|user|>12+34<|assistant|>46<|eos|>                                  (Instruct)
    <|bos|><|user|>12+34<|assistant|><think>12+34=46\\n</think>46<|eos|>      (Thinking)
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from dami_kernels.testbed.tasks import THINK_CLOSE, THINK_OPEN

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, USER, ASSISTANT)
# <think> and </think> are ordinary (non-special) added tokens, as in Qwen3: they survive
# decode(..., skip_special_tokens=True), so the answer extractor can find them.
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)
CHARS = "0123456789+-*/=()., \n"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('the testbed chat template supports only user and assistant roles') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh testbed tokenizer (deterministic ids: special tokens 0-5, think tokens 6-7, then CHARS)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + THINK_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    tok.add_tokens(list(THINK_TOKENS), special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def chat_prompt(tokenizer, question: str) -> str:
    """The generation prompt for ``question``, through the tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
