"""The `gptmini` command: argument parsing only; every verb calls the Python API."""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

from . import __version__
from .errors import GptminiError


def ranged(kind: type, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = True,
           hint: str = ""):
    """An argparse type: a `kind` number from low to high (open ends as given), else a usage error
    (exit 2) saying the range, so that e.g. --val-fraction 20 never reaches the data."""
    span = (f"{'>' if low_open else '≥'} {low}" if high is None
            else f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"must be {noun} {span}, got {text}{hint}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


POSITIVE_INT, NONNEGATIVE_INT = ranged(int, 0, low_open=True), ranged(int, 0)
POSITIVE, NONNEGATIVE = ranged(float, 0, low_open=True), ranged(float, 0)
FRACTION = ranged(float, 0, 1, hint=" (a fraction: 0.05 is 5%)")


def count_or_none(text: str) -> int:
    """A count where "none" (or 0) switches the thing off: --conversations, --augment."""
    return 0 if text.strip().lower() in ("none", "0") else POSITIVE_INT(text)


def count_auto_or_none(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else count_or_none(text)


count_or_none.__name__ = count_auto_or_none.__name__ = "count"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: a value as itself, a flag as "off", an empty list as
    "none", a required option as "(required)". A None default means "it depends", so such an option's
    help says its default in words (e.g. "default: the base's") and nothing is added."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:  # positionals, --help, --version
            return text
        if action.required and "required" not in text:
            return f"{text} (required)"
        if "default" in text:
            return text
        if action.nargs == 0:  # a flag (its None default lets a resumed run keep its saved value)
            return f"{text} (default: off)"
        if action.default is None:
            return text
        shown = "none" if action.default == [] else str(action.default).replace("%", "%%")
        return f"{text} (default: {shown})"


def default_is(value) -> str:
    """Help text for a flag whose parser default is None (so that only a given flag overrides a resumed run's
    saved value) but whose value has a default: the one the code uses."""
    return f" (default: {value})"


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=128, help="most tokens to generate per answer")
    p.add_argument("--temperature", type=NONNEGATIVE, default=0.0,
                   help="sampling temperature; 0 is greedy (always the most likely token)")
    p.add_argument("--top-k", type=POSITIVE_INT, default=None,
                   help="sample only among the K most likely tokens (default: all of them)")
    p.add_argument("--top-p", type=ranged(float, 0, 1, low_open=True, high_open=False), default=None,
                   help="nucleus sampling: only among the most likely tokens whose probabilities add up to P "
                        "(default: off)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for sampling, for answers that repeat run after run (default: none, unseeded)")
    p.add_argument("--stop", action="append", default=[],
                   help="end the answer where this string appears (not printed); repeatable")


def device_name(text: str) -> str:
    """An argparse type: a --device this machine has, else a usage error (exit 2) naming what this torch can use,
    before any data or model is read."""
    from .device import resolve_device

    try:
        resolve_device(text)
    except GptminiError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--device ")) from None
    return text


device_name.__name__ = "device"  # argparse names the type in its own messages
DEVICE_HELP = "auto (a CUDA GPU, else Apple's MPS, else the CPU; said at the start), cpu, cuda, cuda:N or mps"


def add_device_args(p: argparse.ArgumentParser, quantize: bool = True) -> None:
    """--device of a verb that loads a model to answer with (and its --quantize)."""
    p.add_argument("--device", type=device_name, default="auto", help="where the model runs: " + DEVICE_HELP)
    if quantize:  # and --compile: how a verb that generates runs its decode step
        p.add_argument("--quantize", choices=["int8"], help="int8: weight-only int8 products (CPU: with --device "
                                                           "cpu on a GPU machine), a quarter of the weight bytes per "
                                                           "token (default: none, float32)")
        p.add_argument("--compile", action="store_true",
                       help="decode through a compiled fixed-shape step (CPU: AOTInductor; CUDA: CUDA graphs): the "
                            "same tokens, about 2x the eager tokens/s at batch 1 on a 2-core CPU. The first run "
                            "compiles once per batch size (15-30 s), later runs load it from $GPTMINI_CACHE "
                            "(default ~/.cache/gptmini) in about a second (README, Decoding speed)")


def say_device(requested: str) -> None:
    """Where the model runs, on stderr (stdout keeps the answers), when it is not the CPU: a GPU that auto
    picked is news, the CPU is what a laptop expects (training's plan line names it always)."""
    from .device import describe, resolve_device

    device = resolve_device(requested)
    if device.type != "cpu":
        print(f"device: {describe(device, requested)}", file=sys.stderr)


def add_record_format_args(p: argparse.ArgumentParser) -> None:
    """--fields and --encoding of a verb that reads instruction records from --data."""
    p.add_argument("--fields", help="column names, e.g. instruction=pergunta,response=resposta (default: "
                                    "recognised from the file)")
    p.add_argument("--encoding", help="text encoding of --data (default UTF-8; e.g. latin-1)")


def add_variety_args(p: argparse.ArgumentParser) -> None:
    from .sft import DEFAULT_AUGMENT, DEFAULT_CONVERSATIONS

    p.add_argument("--augment", type=count_auto_or_none, default=DEFAULT_AUGMENT, metavar="N|auto|none",
                   help="each epoch, N variants of every question as people type them (no accents, lower case, "
                        "chat short forms, other question forms, typos), answers untouched; auto: 8 from 100 to "
                        "150 records, more below (about 800 forms an epoch, at most 32), fewer above (about "
                        "1,200 forms an epoch); none: off")
    p.add_argument("--conversations", type=count_or_none, default=DEFAULT_CONVERSATIONS, metavar="TURNS|none",
                   help="each epoch, the records also chained into conversations of 2 to TURNS turns, so later "
                        "turns are answered as well as the first; none: off")


def add_lora_args(p: argparse.ArgumentParser, rank_note: str) -> None:
    p.add_argument("--lora-rank", type=POSITIVE_INT, help="train LoRA adapters of this rank instead of every weight"
                                                          + rank_note)
    p.add_argument("--lora-alpha", type=POSITIVE, help="LoRA scaling numerator (default 2 x rank)")
    p.add_argument("--lora-embeddings", action="store_true", help="with LoRA, also train the token embeddings")


def add_mask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show-masks", type=POSITIVE_INT, metavar="N",
                   help="print N formatted examples with trained tokens marked, then exit (default: off, train)")
    p.add_argument("--png", help="with --show-masks: also draw them, tokens coloured by prompt/answer/end-of-text/"
                                 "padding, into this PNG file (default: none)")


def add_page_args(p: argparse.ArgumentParser) -> None:
    """serve's flags that make the page and the API the user's own."""
    page = p.add_argument_group("the page and the API as yours")
    page.add_argument("--title", help="the page's title (default: gptmini · the model's name)")
    page.add_argument("--placeholder", help="the page's text in the empty message box (default: an example, the "
                                            "first question of the checkpoint's training data if it recorded one, "
                                            "else 'Escreva sua mensagem…')")
    page.add_argument("--system", help="system prompt put first in each chat request that brings none of its own "
                                       "(default: none)")


def sampling_params(args: argparse.Namespace):
    from .engine import SamplingParams

    return SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, tuple(args.stop))


def prompt_lines(text: str) -> list[str]:
    """A prompt a line (a .txt --file, or stdin); split at line feeds only, like JSONL: U+2028 stays in its prompt."""
    return [line.removesuffix("\r") for line in text.split("\n") if line.strip()]


def read_prompts(path: str | Path, encoding: str | None = None) -> list[str | list[dict]]:
    """--file: a .txt with one prompt per line, or records in any shape sft reads (the same reader; an
    answer, if any, is left out). A one-turn record gives its text; a conversation (a system message,
    several turns, an input) its messages, for the template."""
    from .data.records import read_examples, read_text

    if Path(path).suffix.lower() == ".txt":
        return prompt_lines(read_text(path, encoding))
    records = read_examples(path, require_answer=False, encoding=encoding)
    if records.skipped or records.as_text:  # never silently: say what was left out or changed
        print(f"note: {path}: {records.report()}", file=sys.stderr)
    prompts = []
    for example in records.examples:
        messages = example.messages[:-1] if example.messages[-1]["role"] == "assistant" else example.messages
        if not any(m["role"] == "user" for m in messages):
            raise GptminiError(f"{example.where}: no user message to answer")
        one_turn = len(messages) == 1 and "input" not in messages[0]
        prompts.append(messages[0]["content"] if one_turn else messages)
    return prompts


def cmd_generate(args: argparse.Namespace) -> None:
    from .checkpoint import load
    from .data.templates import get_template
    from .engine import Engine

    ckpt = load(args.model, device=args.device)
    say_device(args.device)
    template = get_template(args.template) if args.template else ckpt.template
    engine = Engine(ckpt.model, ckpt.tokenizer, template, args.quantize, args.compile)
    params = sampling_params(args)
    prompts = list(args.prompt) + (read_prompts(args.file, args.encoding) if args.file else [])
    piped = not prompts and not args.file and not sys.stdin.isatty()
    if piped:  # a prompt a line, answered in batches like a .txt --file
        prompts = prompt_lines(sys.stdin.read())
    if not prompts:
        raise GptminiError("give prompts as arguments, with --file prompts.jsonl, or on stdin (a prompt a line)")
    raw = template is None or args.raw
    if raw and any(isinstance(p, list) for p in prompts):
        raise GptminiError(f"{args.file}: holds conversations (system message, several turns or an input), which "
                           "need a template; drop --raw, or give --template for a model without one")

    numbered = bool(args.file) or piped or len(prompts) > 1  # several answers: each under its number
    if args.json or args.file or piped:  # batches; one JSON object a line, or the answers a blank line apart
        for i in range(0, len(prompts), args.batch_size):
            chunk = prompts[i:i + args.batch_size]
            read = [engine.read(p, raw=raw) for p in chunk]
            completions = engine.generate([ids for ids, _ in read], params)
            for n, prompt, (_, folding), c in zip(itertools.count(i + 1), chunk, read, completions):
                announce(n if numbered else None, folding, show_number=not args.json)
                print(json.dumps({"prompt": prompt, "text": c.text, "finish_reason": c.finish_reason,
                                  "prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids),
                                  **({"input_folding": folding.to_dict()} if folding else {})},
                                 ensure_ascii=False) if args.json else c.text, flush=True)
        return
    for n, prompt in enumerate(prompts, 1):
        ids, folding = engine.read(prompt, raw=raw)
        announce(n if numbered else None, folding)
        if raw and template is None:
            print(prompt, end="", flush=True)
        engine.generate([ids], params, on_text=lambda _, delta: print(delta, end="", flush=True))
        print()


def announce(number: int | None, folding, show_number: bool = True) -> None:
    """Before an answer: what the vocabulary folded in its prompt (stderr), then its number when it is one of
    several (a blank line after the previous answer, then [n])."""
    from .chat import heading, note_folding

    note_folding(folding, number)
    if show_number and number is not None:
        print(heading(number))


def cmd_eval(args: argparse.Namespace) -> None:
    from .checkpoint import resolve_run
    from .data.templates import get_template
    from .evaluate import metrics_table, quantization_summary, read_eval_data, run_eval

    records = read_eval_data(args.data, args.fields, args.encoding)
    print(f"data: {records.report()}")
    model = resolve_run(args.model)
    # Beside the checkpoint, not inside it: a resumed run rewrites last/ and would delete the report.
    out = Path(args.out or model.parent / "eval" / model.name)
    template = get_template(args.template) if args.template else None
    compare_fp32 = args.quantize is not None and args.compare is not None
    say_device(args.device)
    reports = run_eval([model, *(args.compare or [])], records.examples, out, sampling_params(args), template,
                       args.batch_size, records.skipped, args.device, not args.no_progress, args.quantize,
                       compare_fp32, judge_of(args, out), args.compile)
    print(metrics_table(reports))
    if compare_fp32:
        print(quantization_summary(reports[0], reports[1]))
    charts = [name for name in ("metrics.png", "judge.png", "loss_curves.png") if (out / name).is_file()]
    print(f"report: {out / 'report.md'} (+ report.json, {', '.join(charts)})")


def judge_of(args: argparse.Namespace, out: Path):
    """eval's --judge: a Judge whose cache lies beside the report, or None."""
    if args.judge_model and not args.judge:
        raise GptminiError("--judge-model names the judge's model: give its endpoint too, --judge URL")
    if not args.judge:
        return None
    if not args.judge_model:
        raise GptminiError("--judge needs --judge-model NAME, the judge's model name on that endpoint")
    from .judge import CACHE_FILE, Judge
    from .openai_client import ChatClient

    return Judge(ChatClient(args.judge, args.judge_model, args.judge_api_key), out / CACHE_FILE)


def cmd_augment(args: argparse.Namespace) -> None:
    from .openai_client import ChatClient
    from .rewordings import augment

    client = ChatClient(args.endpoint, args.model, args.api_key, args.timeout)
    result = augment(args.data, args.out, client, args.n, args.fields, args.encoding, args.resume,
                     not args.no_progress)
    print(result.summary(Path(args.out)))


def cmd_chat(args: argparse.Namespace) -> None:
    from .chat import Conversation, run_chat
    from .checkpoint import load
    from .data.templates import get_template
    from .engine import Engine

    ckpt = load(args.model, device=args.device)
    say_device(args.device)
    template = get_template(args.template) if args.template else ckpt.template
    if template is None:  # a base model: it was never taught a template, so any is a guess
        template = get_template()
        print(f"note: {args.model} has no template (a base model?); using {template.name!r} (--template to choose)",
              file=sys.stderr)
    run_chat(Conversation(Engine(ckpt.model, ckpt.tokenizer, template, args.quantize, args.compile), args.system),
             sampling_params(args))


# name: (type, help). Their parser defaults are None, so that only the flags given override a resumed run's
# saved values; the help shows the value a new run takes (DEFAULT_MODEL, TrainConfig) or says it in words.
MODEL_FLAGS = {
    "context_size": (POSITIVE_INT, "tokens the model sees at once (its window)"),
    "d_model": (POSITIVE_INT, "width: the size of each token's vector"),
    "n_heads": (POSITIVE_INT, "attention heads per block"),
    "n_layers": (POSITIVE_INT, "transformer blocks"),
    "n_kv_heads": (POSITIVE_INT, "key/value heads, for grouped-query attention (default: --n-heads, plain "
                                 "multi-head attention)"),
    "mlp_hidden": (POSITIVE_INT, "hidden width of each block's SwiGLU MLP (default: about 8/3 x --d-model, a "
                                 "multiple of 32)"),
    "dropout": (FRACTION, "dropout probability while training (default: 0.0; fine-tuning keeps the base's "
                          "unless given)"),
}
TRAIN_FLAGS = {
    "max_steps": (POSITIVE_INT, "optimiser steps of the run (with --resume: the step to reach)"),
    "batch_size": (POSITIVE_INT, "sequences per micro-batch (dpo: pairs, each a chosen and a rejected sequence)"),
    "grad_accum": (POSITIVE_INT, "micro-batches per optimiser step: a step sees --batch-size x this sequences"),
    "lr": (POSITIVE, "peak learning rate, reached after the warmup"),
    "warmup_steps": (NONNEGATIVE_INT, "steps of linear warmup (default: a 20th of the run, at most 100)"),
    "min_lr_ratio": (ranged(float, 0, 1, high_open=False), "the decay ends at --lr x this"),
    "weight_decay": (NONNEGATIVE, "AdamW weight decay of the matrices and embeddings (norms: none)"),
    "grad_clip": (NONNEGATIVE, "clip the gradient norm to this; 0: no clipping"),
    "eval_every": (POSITIVE_INT, "steps between validations (best/ is saved when the loss improves)"),
    "eval_batches": (POSITIVE_INT, "batches per validation of a pretraining run (SFT validates every example)"),
    "save_every": (POSITIVE_INT, "steps between saves of last/"),
    "log_every": (POSITIVE_INT, "steps between metrics.jsonl lines (printed too with --no-progress)"),
    "max_time": (POSITIVE, "seconds of training, then save and stop; the learning rate decays over the steps they "
                           "allow at the measured pace (default: no limit)"),
    # numpy's generators (the validation split) take no negative seed
    "seed": (NONNEGATIVE_INT, "seed of the initial weights, the data order and the validation split"),
    "device": (device_name, "where to train: " + DEVICE_HELP),
}


def add_training_args(p: argparse.ArgumentParser, model_flags: bool = True, train_defaults: dict | None = None) -> None:
    """The training flags; model_flags=False for a verb whose model is always a checkpoint's (dpo);
    train_defaults: the verb's own defaults for some TrainConfig fields (shown in the help)."""
    from .device import PRECISIONS
    from .pretrain import DEFAULT_MODEL
    from .tracking import TRACKERS
    from .train import TrainConfig

    if model_flags:
        model = p.add_argument_group("model (a new model only; a resumed or fine-tuned one keeps its shape)")
        model.add_argument("--config", help="JSON file of model config fields; flags given too win (default: none)")
        for name, (kind, text) in MODEL_FLAGS.items():
            shown = default_is(DEFAULT_MODEL[name]) if name in DEFAULT_MODEL else ""
            model.add_argument("--" + name.replace("_", "-"), type=kind, help=text + shown)
    defaults = TrainConfig(**(train_defaults or {}))
    train = p.add_argument_group("training", "with --resume the run's saved values are the defaults; flags given win")
    for name, (kind, text) in TRAIN_FLAGS.items():
        shown = default_is(getattr(defaults, name)) if getattr(defaults, name) is not None else ""
        train.add_argument("--" + name.replace("_", "-"), type=kind, help=text + shown)
    train.add_argument("--schedule", choices=["cosine", "linear", "constant"],
                       help="how the learning rate decays after the warmup" + default_is(defaults.schedule))
    train.add_argument("--precision", choices=PRECISIONS, help="mixed precision (autocast; weights and checkpoints "
                       "stay fp32): auto is bf16 on a GPU that has it natively (compute capability >= 8), else fp32; "
                       "fp16 (CUDA) trains with a gradient scaler" + default_is(defaults.precision))
    train.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="--precision bf16")
    train.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    train.add_argument("--no-progress", dest="show_progress", action="store_false", default=None,
                       help="no progress bars: a plain line every --log-every steps instead (for log files)")
    train.add_argument("--log-to", action="append", choices=TRACKERS, help="also log the metrics to this tracker "
                       "(repeat for both; W&B offline without WANDB_API_KEY); metrics.jsonl is always written (default: none)")
    train.add_argument("--devices", type=POSITIVE_INT, default=1,
                       help="processes to train with (DDP via torchrun: gloo on CPU, NCCL with --device cuda)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")


def given(args: argparse.Namespace, names) -> dict:
    """Only the flags the user gave, so that defaults and saved configs are not overridden."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def model_overrides(args: argparse.Namespace) -> dict:
    values = {}
    if args.config:
        try:
            values = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GptminiError(f"{args.config}: cannot read model config JSON ({exc})") from None
    return {**values, **given(args, MODEL_FLAGS)}


def train_overrides(args: argparse.Namespace) -> dict:
    return given(args, [*TRAIN_FLAGS, "schedule", "precision", "compile", "show_progress", "log_to"])


def print_summary(summary: dict, out: str) -> None:
    print(json.dumps({"out": out, **summary}, indent=2))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .pretrain import pretrain

    summary = pretrain(args.out, args.data, args.tokenizer, args.vocab_size, model_overrides(args),
                       train_overrides(args), args.resume, args.overwrite, args.val_fraction, args.mix_data,
                       args.mix_ratio, args.template, args.fields, args.augment)
    print_summary(summary, args.out)


def cmd_sft(args: argparse.Namespace) -> None:
    from .sft import preview_masks, sft

    if args.png and not args.show_masks:
        raise GptminiError("--png draws the masks that --show-masks N prints: give both")
    if args.show_masks:
        print(preview_masks(args.data, args.base, args.template, args.fields, args.tokenizer, args.vocab_size,
                            args.show_masks, encoding=args.encoding, png=args.png, augment=args.augment,
                            conversations=args.conversations))
        return
    if not args.out:
        raise GptminiError("--out is required (the run folder to write checkpoints into)")
    summary = sft(args.out, args.data, args.base, args.template, args.fields, args.val_data, args.val_fraction,
                  args.tokenizer, args.vocab_size, args.long_examples, args.epochs, model_overrides(args),
                  train_overrides(args), args.resume, args.overwrite, args.lora_rank, args.lora_alpha,
                  args.lora_embeddings, encoding=args.encoding, augment=args.augment, conversations=args.conversations)
    print_summary(summary, args.out)


def cmd_dpo(args: argparse.Namespace) -> None:
    from .dpo import dpo

    summary = dpo(args.out, args.data, args.base, args.fields, args.val_data, args.val_fraction, args.template,
                  args.beta, args.loss, args.label_smoothing, args.epochs, train_overrides(args), args.resume,
                  args.overwrite, args.lora_rank, args.lora_alpha, args.lora_embeddings, encoding=args.encoding)
    print_summary(summary, args.out)


def cmd_pairs(args: argparse.Namespace) -> None:
    from .pairs import make_pairs

    say_device(args.device)
    make_pairs(args.model, args.data, args.out, args.similar, args.fields, args.encoding, args.batch_size,
               args.max_new_tokens, args.device, show_progress=not args.no_progress)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import demo

    demo(args.out, args.pretrain_steps, args.sft_epochs, args.seed, show_progress=not args.no_progress,
         mix_ratio=args.mix_ratio)


def cmd_export(args: argparse.Namespace) -> None:
    if args.format == "gguf":
        if args.adapter:
            raise GptminiError("--adapter writes PEFT files for transformers: use it with --format hf; "
                               "--format gguf exports the run's merged weights")
        from .gguf_export import MODELFILE, export_gguf

        out = export_gguf(args.model, args.out, args.dtype)
        print(f"wrote {out} (GGUF, {args.dtype}; llama.cpp, Ollama) and {out.parent / MODELFILE} "
              f"(ollama create NAME -f {out.parent / MODELFILE})")
        return
    if args.dtype != "f32":
        raise GptminiError(f"--dtype {args.dtype} applies to --format gguf; the transformers export is f32")
    from .hf import export, export_adapter

    if args.adapter:
        print(f"wrote {export_adapter(args.model, args.out)} (PEFT LoRA adapter) beside {Path(args.out) / 'base'} "
              "(its base, transformers LlamaForCausalLM + tokenizer)")
    else:
        print(f"wrote {export(args.model, args.out)} (transformers LlamaForCausalLM + tokenizer)")


def cmd_import_hf(args: argparse.Namespace) -> None:
    from .hf import import_hf

    print(f"wrote {import_hf(args.hf_dir, args.out)} (gptmini checkpoint)")


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        from .serve import run_server
    except ModuleNotFoundError as exc:
        raise GptminiError(f"serving needs the 'serve' extra ({exc.name} is not installed): "
                           "pip install 'gptmini[serve]'") from None

    run_server(args.model, args.host, args.port, api_key=args.api_key, max_tokens=args.max_tokens,
               max_batch=args.max_batch, queue_size=args.queue_size, device=args.device, quantize=args.quantize,
               compile=args.compile, title=args.title, placeholder=args.placeholder, system=args.system,
               threads=args.threads)


class PromptHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """HelpFormatter that prints the epilog (a prompt sent to a model) line for line."""


API_KEY_HELP = "sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY, else none)"


def add_eval_args(p: argparse.ArgumentParser, model_help: str) -> None:
    from .judge import JUDGE_PROMPT

    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--data", required=True, help="records in any format sft accepts (the last answer is the reference)")
    p.add_argument("--compare", nargs="*", help="more checkpoints to put beside --model; with --quantize, also --model "
                                                "in float32, and a line comparing loss and answers (default: none)")
    add_record_format_args(p)
    p.add_argument("--template", help="template for checkpoints without one, a base model (default: the first "
                                      "template among the models)")
    p.add_argument("--out", help="report folder (default: beside the checkpoint, RUN/eval/last for RUN/last)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="prompts answered together (and loss batch size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while answering")
    add_device_args(p)
    add_sampling_args(p)
    judge = p.add_argument_group("judge", "a bigger model scores each answer 0-100 against the reference; its replies "
                                          "are cached in OUT/judge_cache.jsonl, so a rerun asks only what changed")
    judge.add_argument("--judge", metavar="URL", help="the judge's OpenAI-compatible endpoint, e.g. "
                                                      "http://localhost:11434/v1 (Ollama) (default: none, no judge)")
    judge.add_argument("--judge-model", help="the judge's model name there, e.g. llama3.1:8b (required with --judge)")
    judge.add_argument("--judge-api-key", help=API_KEY_HELP)
    p.epilog = "the judge's prompt (temperature 0; the reply must be the number alone):\n\n" + JUDGE_PROMPT
    p.formatter_class = PromptHelpFormatter
    p.set_defaults(func=cmd_eval)


def add_augment_args(p: argparse.ArgumentParser) -> None:
    from .rewordings import REWORD_PROMPT, TEACHER_TEMPERATURE

    p.add_argument("--data", required=True, help="instruction records in any format sft reads")
    p.add_argument("--endpoint", required=True, help="OpenAI-compatible URL: http://localhost:11434/v1 (Ollama), "
                                                     "http://localhost:8080 (llama.cpp), https://api.openai.com/v1")
    p.add_argument("--model", required=True, help="the teacher's model name at the endpoint, e.g. llama3.1:8b")
    p.add_argument("--n", type=POSITIVE_INT, default=5, help="rewordings asked for each question")
    p.add_argument("--out", required=True, help="JSONL written as answers come: each record, then its kept rewordings "
                                                "(same answer), each with its source FILE:LINE; sft reads it")
    p.add_argument("--api-key", help=API_KEY_HELP)
    p.add_argument("--timeout", type=POSITIVE, default=120.0, help="seconds to wait for each answer; a timeout or a "
                                                                   "5xx is retried 4 times, waiting 1, 2, 4, 8 s")
    p.add_argument("--resume", action="store_true", help="carry on from --out: ask only the records it lacks")
    add_record_format_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = (f"the prompt, for each record (temperature {TEACHER_TEMPERATURE}):\n\n{REWORD_PROMPT}\n\n"
                "kept: lines that are questions (end with '?' when the original does; never a line ending with ':'), "
                "equal to no record's question, nor to one kept before, compared without case, accents, "
                "punctuation or spaces")
    p.formatter_class = PromptHelpFormatter
    p.set_defaults(func=cmd_augment)


def demo_args(p: argparse.ArgumentParser) -> None:
    from .demo import DEMO_MIX_RATIO, DEMO_PRETRAIN_STEPS, DEMO_SFT_EPOCHS

    p.add_argument("--out", default="runs/demo", help="folder for both runs and the evaluation (replaced)")
    p.add_argument("--pretrain-steps", type=POSITIVE_INT, default=DEMO_PRETRAIN_STEPS, help="steps of pretraining the base")
    p.add_argument("--sft-epochs", type=POSITIVE, default=DEMO_SFT_EPOCHS,
                   help="passes over the instruction set in SFT (each with new question variants and conversations)")
    p.add_argument("--mix-ratio", type=FRACTION, default=DEMO_MIX_RATIO,
                   help="share of pretraining windows drawn from the instruction set (midtraining); 0 turns it off")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="seed of both runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars: plain log lines instead")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptmini", description="Pretrain, instruction-tune, evaluate, chat with and serve a small GPT.")
    parser.add_argument("--version", action="version", version=f"gptmini {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    model_help = "checkpoint directory, or a run folder (its last/ checkpoint)"
    p = verb("generate", "answer prompts with a checkpoint (streams the text)")
    p.add_argument("prompt", nargs="*", help="prompts (instructions, formatted with the checkpoint's template); "
                                             "without any and without --file, a prompt a line from stdin")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--template", help="override the checkpoint's template, a name or a file (default: the checkpoint's)")
    p.add_argument("--raw", action="store_true", help="no template: continue the text as given")
    p.add_argument("--file", help="prompts answered in batches, each answer under its number: a .txt, a prompt a line, "
                                  "or records in any format sft reads (prompt, instruction, messages...) (default: none)")
    p.add_argument("--encoding", help="text encoding of --file (default UTF-8)")
    p.add_argument("--json", action="store_true", help="one JSON object per answer (text, finish_reason, token counts)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="prompts answered together (--file, stdin)")
    add_device_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    add_eval_args(verb("eval", "score answers against references; compare checkpoints side by side"), model_help)

    add_augment_args(verb("augment", "ask a teacher model (any OpenAI-compatible endpoint) for Portuguese rewordings "
                                     "of each question, the answers unchanged"))

    p = verb("chat", "talk to a checkpoint at the terminal (streams; /reset, /temp X, /quit)")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--template", help="override the checkpoint's template (default: the checkpoint's; comando for "
                                      "a model without one)")
    p.add_argument("--system", help="system message, said before the conversation (default: none)")
    add_device_args(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    out_help = "run folder (checkpoints last/ and best/, metrics, loss.png)"
    p = verb("pretrain", "train a base model on a text corpus")
    p.add_argument("--data", nargs="+", help="text files (.txt, .txt.gz, .txt.xz) or folders; default: the embedded corpus")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--tokenizer", default="bpe", help="char, bpe (trained on the corpus), or a tokenizer.json / "
                                                      "checkpoint to reuse")
    p.add_argument("--vocab-size", type=POSITIVE_INT, help="BPE vocabulary size (default 8192)")
    p.add_argument("--val-fraction", type=FRACTION, default=0.05,
                   help="share of the corpus's text blocks held out for validation")
    p.add_argument("--mix-data", help="midtraining: instruction records (any format sft reads) mixed into the "
                                      "pretraining windows, formatted by --template (default: none)")
    p.add_argument("--mix-ratio", type=FRACTION, default=0.1, help="share of training windows drawn from --mix-data")
    p.add_argument("--template", help="template that formats --mix-data (default: comando)")
    p.add_argument("--augment", type=count_auto_or_none, default="auto", metavar="N|auto|none",
                   help="question variants of each --mix-data record mixed in too, as sft makes them")
    p.add_argument("--fields", help="column names of --mix-data, e.g. instruction=pergunta,response=resposta "
                                    "(default: recognised from the file)")
    add_training_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = verb("sft", "instruction-tune a base model (loss on the responses only)")
    p.add_argument("--base", default="none", help="base checkpoint dir (or run folder), a legacy state-dict .pt, "
                                                  "or none: a new model trained from scratch")
    p.add_argument("--data", help="JSON/JSONL/CSV/TSV/parquet records (a folder of parquet shards, or "
                                  "hf:OWNER/NAME[:SPLIT] from the Hub); default: the embedded instruction set")
    p.add_argument("--out", help=out_help + " (required, except with --show-masks)")
    p.add_argument("--template", help="comando (default), alpaca, chat, or a template file")
    p.add_argument("--fields", help="column names, e.g. instruction=pergunta,response=resposta (for --val-data: "
                                    "only if its own shape is not recognised; default: recognised from the file)")
    p.add_argument("--encoding", help="text encoding of --data and --val-data (default UTF-8; e.g. latin-1)")
    p.add_argument("--val-data", help="separate validation file (default: none, --val-fraction of --data)")
    p.add_argument("--val-fraction", type=FRACTION, default=0.05,
                   help="share of --data held out for validation (without --val-data)")
    p.add_argument("--tokenizer", help="char or bpe (trained on the data), or a tokenizer.json (default: the "
                                       "base's; char for a new model)")
    p.add_argument("--vocab-size", type=POSITIVE_INT, help="BPE vocabulary size (default 8192)")
    p.add_argument("--long-examples", choices=["pinned", "truncate", "window"], default="pinned",
                   help="examples longer than the context: pinned trains the answer in windows that "
                        "each start with the whole instruction; truncate cuts the prompt first; window splits "
                        "into overlapping windows")
    p.add_argument("--epochs", type=POSITIVE, help="train for this many passes over the data, instead of "
                                                   "--max-steps: giving both is an error (default: by --max-steps)")
    add_mask_args(p)
    add_variety_args(p)
    add_lora_args(p, " (default: off, every weight trained)")
    add_training_args(p)
    p.set_defaults(func=cmd_sft)

    from .dpo import DEFAULT_BETA, DEFAULT_VAL_FRACTION, DPO_TRAIN, LOSSES

    p = verb("dpo", "preference-tune an assistant on (prompt, chosen, rejected) pairs (DPO)")
    p.add_argument("--base", help="the checkpoint to tune (dir or run folder), e.g. an SFT run; also the frozen "
                                  "reference (required, except with --resume)")
    p.add_argument("--data", required=True, help="preference pairs, JSON/JSONL/CSV/TSV/parquet or hf:OWNER/NAME: {prompt, chosen, rejected} "
                                                 "texts, or TRL's conversational lists of messages")
    p.add_argument("--out", required=True, help=out_help + ", and reference.safetensors (the cached reference)")
    p.add_argument("--fields", help="column names, e.g. prompt=pergunta,chosen=boa,rejected=ruim (default: "
                                    "prompt, chosen, rejected)")
    p.add_argument("--encoding", help="text encoding of --data and --val-data (default UTF-8; e.g. latin-1)")
    p.add_argument("--val-data", help="separate validation pairs (default: none, --val-fraction of --data)")
    p.add_argument("--val-fraction", type=FRACTION, help="share of --data held out for validation (without "
                                                         f"--val-data){default_is(DEFAULT_VAL_FRACTION)}")
    p.add_argument("--template", help="template of a --base that has none (default: the base's own)")
    p.add_argument("--beta", type=POSITIVE, help="how far the model may move from the reference: the DPO "
                                                 f"temperature; IPO's tau{default_is(DEFAULT_BETA)}")
    p.add_argument("--loss", choices=LOSSES, help="sigmoid: DPO; ipo: IPO, log-ratios averaged per token as in "
                                                  "TRL (default: sigmoid)")
    p.add_argument("--label-smoothing", type=ranged(float, 0, 0.5),
                   help="conservative DPO: the share of pairs assumed mislabelled (default: 0.0)")
    p.add_argument("--epochs", type=POSITIVE, help="train for this many passes over the pairs, instead of "
                                                   "--max-steps: giving both is an error (default: by --max-steps)")
    add_lora_args(p, "; the reference stays the base (default: off)")
    add_training_args(p, model_flags=False, train_defaults=DPO_TRAIN)
    p.set_defaults(func=cmd_dpo)

    p = verb("pairs", "make preference pairs from instruction records: the model's own wrong answers as rejected")
    p.add_argument("--model", required=True, help="the assistant checkpoint (dir or run folder) whose answers to use")
    p.add_argument("--data", required=True, help="instruction records in any format sft reads")
    p.add_argument("--out", required=True, help="JSONL file of pairs to write ({prompt, chosen, rejected})")
    p.add_argument("--similar", action="store_true", help="also pair each record's answer (chosen) with the answer "
                                                          "of the most similar other instruction (rejected)")
    add_record_format_args(p)
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="prompts answered together")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT, default=128, help="most tokens per answer")
    add_device_args(p, quantize=False)
    p.add_argument("--no-progress", action="store_true", help="no progress bar while answering")
    p.set_defaults(func=cmd_pairs)

    from .scheduler import MAX_BATCH

    p = verb("serve", "OpenAI-compatible HTTP API and a web chat page")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 127.0.0.1 is this machine only")
    p.add_argument("--port", type=ranged(int, 0, 65535, high_open=False), default=8000, help="port to listen on")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: none, open)")
    p.add_argument("--max-tokens", type=POSITIVE_INT, default=256, help="cap on max_tokens per request")
    p.add_argument("--max-batch", type=POSITIVE_INT, default=MAX_BATCH,
                   help="requests decoded together, one batched step per token; on a CPU a step of 8 costs about "
                        "2x a step of 1 (the weights stream once for all), beyond ~16 each user's latency grows")
    p.add_argument("--queue-size", type=NONNEGATIVE_INT, default=16, help="requests that may wait; beyond that: 429")
    p.add_argument("--threads", type=POSITIVE_INT, help="threads for the model's products (default: every core but "
                   "one, which the HTTP side and its clients need: on 2 cores 1 thread serves 1.1-1.7x the tokens/s of 2)")
    add_device_args(p)
    add_page_args(p)
    p.set_defaults(func=cmd_serve)

    p = verb("export", "write a checkpoint as a Hugging Face transformers (Llama) model, or as GGUF for "
                       "llama.cpp / Ollama")
    p.add_argument("--model", required=True, help="gptmini checkpoint directory (or run folder)")
    p.add_argument("--out", required=True, help="hf: directory for the transformers model; gguf: the .gguf file "
                                                "(an Ollama Modelfile is written beside it)")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf",
                   help="hf: transformers LlamaForCausalLM; gguf: one file for llama.cpp, Ollama, LM Studio "
                        "(byte-level BPE checkpoints only)")
    p.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f32",
                   help="GGUF weight type: f32 exact, f16 half the size, q8_0 (8-bit blocks) about a quarter")
    p.add_argument("--adapter", action="store_true",
                   help="for a LoRA run: OUT/adapter in PEFT's format (adapter_config.json + "
                        "adapter_model.safetensors) and its base model in OUT/base")
    p.set_defaults(func=cmd_export)

    p = verb("import-hf", "convert a local Hugging Face Llama-family model to a gptmini checkpoint")
    p.add_argument("hf_dir", help="directory with config.json, model*.safetensors, tokenizer.json")
    p.add_argument("--out", required=True, help="directory for the gptmini checkpoint")
    p.set_defaults(func=cmd_import_hf)

    p = verb("demo", "the whole journey on the embedded defaults: pretrain -> SFT -> eval -> answers")
    demo_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def launch_distributed(argv: list[str], devices: int) -> int:
    """Re-runs this command under torchrun with `devices` processes (the flag itself removed)."""
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--devices="):
            skip = False
            continue
        if arg == "--devices":
            skip = True
            continue
        rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               "-m", "gptmini.cli", *rest]
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if getattr(args, "devices", 1) > 1 and "WORLD_SIZE" not in os.environ:
        return launch_distributed(argv, args.devices)
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
