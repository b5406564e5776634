#!/usr/bin/env python3
"""Chat-template fixtures for crates/serve/tests/hardening.rs (hardening finding 8).

Two model directories as transformers saves or reads them, each with a small byte-level BPE
tokenizer whose special tokens the templates use, and `expected.json`: for a few conversations,
the prompt text and token ids of `apply_chat_template(..., add_generation_prompt=True)`.

- `chatml`: SmolLM2-Instruct's ChatML template, saved by `save_pretrained` (transformers 4.43+
  writes it to `chat_template.jinja`);
- `named`: the older list form in `tokenizer_config.json`, `[{name, template}]`, with Zephyr's
  template (block tags on their own lines: transformers renders with trim_blocks and
  lstrip_blocks) as `default` and another as `tool_use`.

Run from the repository root: /work/venv/bin/python scripts/make_chat_fixtures.py
(needs transformers and tokenizers).
"""
import json
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

OUT = Path("crates/serve/tests/fixtures/chat")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>", "<s>", "</s>"]

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

TOOL_USE = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    [{"role": "user", "content": "  Café crème 🙂\n\twith  tabs and newlines\n"}],
]

CORPUS = [
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. What is 2+2? Be brief.",
    "system user assistant And 3+3? Hi there, how are you today? Café crème with tabs and newlines.",
]


def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")


def expected(directory: Path) -> None:
    loaded = AutoTokenizer.from_pretrained(directory)
    cases = []
    for messages in CONVERSATIONS:
        text = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        cases.append({"messages": messages, "text": text, "ids": ids})
    meta = {"transformers": transformers.__version__, "cases": cases}
    (directory / "expected.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    chatml = OUT / "chatml"
    tok = tokenizer()
    tok.chat_template = SMOLLM2
    tok.save_pretrained(chatml)
    assert (chatml / "chat_template.jinja").is_file(), "transformers saved the template elsewhere"
    expected(chatml)

    named = OUT / "named"
    tokenizer().save_pretrained(named)
    config_path = named / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = [{"name": "default", "template": ZEPHYR}, {"name": "tool_use", "template": TOOL_USE}]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (named / "chat_template.jinja").unlink(missing_ok=True)
    expected(named)


if __name__ == "__main__":
    main()
