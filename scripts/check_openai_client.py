#!/usr/bin/env python3
"""The official `openai` Python client against `truthgpt serve`, unchanged: models list, chat,
chat streaming, completions, completions streaming with usage.

    target/release/truthgpt serve --model runs/quickstart --port 8000 &
    python3 scripts/check_openai_client.py --base-url http://127.0.0.1:8000/v1

Needs `pip install openai`. Exits 1 on the first failure.
"""
import argparse
import sys

from openai import OpenAI


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)

    models = client.models.list()
    model = models.data[0].id
    print(f"models: {[m.id for m in models.data]}")

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Who is there?"}], max_tokens=20, temperature=0
    )
    print(f"chat: {chat.choices[0].message.content!r} ({chat.choices[0].finish_reason}, {chat.usage})")
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0

    pieces = []
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Who is there?"}], max_tokens=20, temperature=0, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    print(f"chat stream: {''.join(pieces)!r}")
    assert "".join(pieces) == chat.choices[0].message.content, "streamed and whole greedy replies differ"

    completion = client.completions.create(model=model, prompt="ROMEO.\n", max_tokens=20, temperature=0.8, seed=3)
    print(f"completion: {completion.choices[0].text!r} ({completion.usage})")

    usage = None
    texts = []
    for chunk in client.completions.create(
        model=model, prompt="ROMEO.\n", max_tokens=20, temperature=0.8, seed=3, stream=True,
        stream_options={"include_usage": True},
    ):
        texts.extend(c.text for c in chunk.choices)
        usage = chunk.usage or usage
    print(f"completion stream: {''.join(texts)!r} ({usage})")
    assert "".join(texts) == completion.choices[0].text, "a seeded stream differs from the whole reply"
    assert usage is not None and usage.completion_tokens == completion.usage.completion_tokens
    print("ok: the openai client works unchanged")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}")
        sys.exit(1)
