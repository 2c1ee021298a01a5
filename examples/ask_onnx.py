"""Ask an exported model a question with onnxruntime-genai alone: no tuneforge, no torch.

    tuneforge models download MODEL-int4 -o model-int4
    python examples/ask_onnx.py model-int4 "Which port does the admin page use?" [--system TEXT]

The folder is an ONNX Runtime GenAI model as the conversion service exports it: genai_config.json,
the model with its KV cache, the tokenizer and the chat template. Decoding is greedy.
"""

from __future__ import annotations

import argparse
import json
import sys

import onnxruntime_genai as og


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("question")
    parser.add_argument("--system", default="")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    model = og.Model(args.model_dir)
    tokenizer = og.Tokenizer(model)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.question})
    prompt = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    tokens = tokenizer.encode(prompt)

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(tokens) + args.max_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens)
    stream = tokenizer.create_stream()
    while not generator.is_done():
        generator.generate_next_token()
        sys.stdout.write(stream.decode(generator.get_next_tokens()[0]))
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
