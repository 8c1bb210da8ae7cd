"""The `gptmini` command: argument parsing only; every verb calls the Python API."""
from __future__ import annotations

import argparse
import sys

from .errors import GptminiError


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_params(args: argparse.Namespace):
    from .engine import SamplingParams

    return SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, tuple(args.stop))


def cmd_generate(args: argparse.Namespace) -> None:
    from .checkpoint import load
    from .data.templates import get_template
    from .engine import Engine

    ckpt = load(args.model, device=args.device)
    template = get_template(args.template) if args.template else ckpt.template
    engine = Engine(ckpt.model, ckpt.tokenizer, template)
    params = sampling_params(args)
    for prompt in args.prompt:
        if template is None or args.raw:
            ids = engine.encode_prompt(prompt)
        else:
            ids = engine.encode_prompt([{"role": "user", "content": prompt}])
        if args.raw and template is None:
            print(prompt, end="", flush=True)
        engine.generate([ids], params, on_text=lambda _, delta: print(delta, end="", flush=True))
        print()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptmini", description="Pretrain, instruction-tune, evaluate, chat with and serve a small GPT.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("generate", help="answer prompts with a checkpoint (streams the text)")
    p.add_argument("prompt", nargs="+", help="one or more prompts (instructions, formatted with the checkpoint's template)")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--template", help="override the checkpoint's template (name or file)")
    p.add_argument("--raw", action="store_true", help="no template: continue the text as given")
    p.add_argument("--device", default="cpu")
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GptminiError as exc:
        print(f"gptmini {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptmini {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
