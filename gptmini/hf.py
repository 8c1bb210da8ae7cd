"""Bridges to Hugging Face `transformers`: export to, and import from, the Llama layout.

GPTMini's block is Llama's (RMSNorm, rotate-half RoPE, SwiGLU, no biases), so the conversion is
a renaming plus two splits: our fused qkv projection into q/k/v, our fused gate_up into gate/up.
A LoRA run's adapters export in PEFT's layout beside their base. Nothing here imports
`transformers` or `peft`: the files are written and read directly.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import checkpoint
from .data.templates import Template
from .errors import GptminiError
from .lora import ADAPTER, TARGETS
from .model import GPTConfig, GPTMini
from .tokenizer import Tokenizer


def _layer_names(i: int) -> dict[str, str]:
    hf = f"model.layers.{i}."
    return {f"blocks.{i}.attn_norm.weight": hf + "input_layernorm.weight",
            f"blocks.{i}.attn.proj.weight": hf + "self_attn.o_proj.weight",
            f"blocks.{i}.mlp_norm.weight": hf + "post_attention_layernorm.weight",
            f"blocks.{i}.mlp.down.weight": hf + "mlp.down_proj.weight"}


def split_fused(c: GPTConfig, i: int, tensor: torch.Tensor, fused: str) -> dict[str, torch.Tensor]:
    """Block i's fused projection ("attn.qkv" or "mlp.gate_up"; a weight or a LoRA B, output rows
    first) as the transformers modules it becomes: q/k/v or gate/up."""
    hf = f"model.layers.{i}."
    if fused == "attn.qkv":
        parts = tensor.split((c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim))
        return {hf + f"self_attn.{p}_proj": t for p, t in zip("qkv", parts)}
    return {hf + f"mlp.{p}_proj": t for p, t in zip(("gate", "up"), tensor.chunk(2))}


def to_hf_state(model: GPTMini) -> dict[str, torch.Tensor]:
    c, ours = model.config, checkpoint.weights_state_dict(model)
    state = {"model.embed_tokens.weight": ours["embed.weight"], "model.norm.weight": ours["norm.weight"]}
    if not c.tie_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"]
    for i in range(c.n_layers):
        state.update({hf: ours[name] for name, hf in _layer_names(i).items()})
        for fused in ("attn.qkv", "mlp.gate_up"):
            split = split_fused(c, i, ours[f"blocks.{i}.{fused}.weight"], fused)
            state.update({module + ".weight": t for module, t in split.items()})
    return {k: v.contiguous() for k, v in state.items()}


def chat_template(template: Template, eos: str, bos: str | None = None) -> str:
    """The checkpoint's template as a Jinja chat template (what `apply_chat_template` renders); a model with
    a BOS gets it in front, as our Template.encode puts it."""
    def piece(text: str, placeholder: str) -> str:
        before, _, after = text.partition(placeholder)
        return f"{{{{ {json.dumps(before)} }}}}{{{{ message['content'] }}}}{{{{ {json.dumps(after)} }}}}"

    system = piece(template.system, "{system}") if template.system else ""
    return ((f"{{{{ {json.dumps(bos)} }}}}" if bos else "") + "{% for message in messages %}"
            f"{{% if message['role'] == 'system' %}}{system}"
            f"{{% elif message['role'] == 'user' %}}{piece(template.prompt, '{instruction}')}"
            f"{{% else %}}{{{{ message['content'] }}}}{{{{ {json.dumps(eos)} }}}}{{% endif %}}"
            "{% endfor %}")


def export(model_dir: str | Path, out: str | Path, template: Template | None = None) -> Path:
    """A gptmini checkpoint -> a transformers LlamaForCausalLM directory (with tokenizer).

    template: the chat template to write, when not the checkpoint's own (a LoRA run's, for its base).
    """
    ckpt = checkpoint.load(model_dir)
    template = template or ckpt.template
    c, tok = ckpt.model.config, ckpt.tokenizer
    eos, pad = tok.id_to_token(tok.eot_id), tok.id_to_token(tok.pad_id)
    bos = tok.id_to_token(tok.bos_id) if tok.bos_id is not None else None
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
              "hidden_size": c.d_model, "intermediate_size": c.mlp_hidden, "num_hidden_layers": c.n_layers,
              "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
              "max_position_embeddings": c.context_size, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
              "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": c.tie_embeddings,
              "initializer_range": 0.02, "torch_dtype": "float32", "eos_token_id": tok.eot_id,
              "pad_token_id": tok.pad_id, "bos_token_id": tok.bos_id}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
                        "model_max_length": c.context_size, "clean_up_tokenization_spaces": False}
    if tok.unk_id is not None:
        tokenizer_config["unk_token"] = tok.id_to_token(tok.unk_id)
    if bos:  # tokenizer.json's post-processor adds it; the config says so for readers of the config
        tokenizer_config.update(bos_token=bos, add_bos_token=True)
    if template:
        tokenizer_config["chat_template"] = chat_template(template, eos, bos)
    generation = {"eos_token_id": tok.eot_id, "pad_token_id": tok.pad_id, "do_sample": False,
                  "max_length": c.context_size}
    with checkpoint.atomic_directory(out) as tmp:
        save_file(to_hf_state(ckpt.model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, data in (("config.json", config), ("tokenizer_config.json", tokenizer_config),
                           ("generation_config.json", generation)):
            (tmp / name).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        shutil.copy(ckpt.path / checkpoint.TOKENIZER, tmp / "tokenizer.json")  # the resolved dir: a run folder names its last/
    return Path(out)


def peft_state(c: GPTConfig, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our adapters (lora_a: r x in, lora_b: out x r per fused projection) under PEFT's names.

    A fused projection's B splits by output rows like its weight; its modules share A, so each
    split keeps B_part @ A, exactly the rows of B @ A.
    """
    state = {}
    for i in range(c.n_layers):
        for target in TARGETS:
            a, b = ours[f"blocks.{i}.{target}.lora_a"], ours[f"blocks.{i}.{target}.lora_b"]
            if target in ("attn.qkv", "mlp.gate_up"):
                modules = split_fused(c, i, b, target)
            else:
                modules = {_layer_names(i)[f"blocks.{i}.{target}.weight"].removesuffix(".weight"): b}
            for module, b_part in modules.items():
                state[f"base_model.model.{module}.lora_A.weight"] = a.clone()  # safetensors stores no aliases
                state[f"base_model.model.{module}.lora_B.weight"] = b_part
    return {k: v.contiguous() for k, v in state.items()}


def export_adapter(model_dir: str | Path, out: str | Path) -> Path:
    """A LoRA run -> OUT/base (its base model, for transformers) and OUT/adapter (PEFT's
    adapter_config.json + adapter_model.safetensors), for `PeftModel.from_pretrained(base, OUT/adapter)`."""
    ckpt = checkpoint.load(model_dir)
    spec = ckpt.meta.get("lora")
    if not spec:
        raise GptminiError(f"{ckpt.path}: not a LoRA run (sft --lora-rank), so it has no adapter; "
                           "export it without --adapter")
    if spec.get("embeddings"):
        raise GptminiError(f"{ckpt.path}: trained its embeddings in full (--lora-embeddings), which a PEFT LoRA "
                           "adapter cannot hold; export the merged model without --adapter")
    file = ckpt.path / ADAPTER
    try:
        ours = load_file(str(file))
    except (OSError, SafetensorError) as exc:
        raise GptminiError(f"{file}: cannot read the LoRA adapter ({exc})") from None
    base = Path(ckpt.meta["source"]["base"])
    if checkpoint.read_config(base)["model"] != ckpt.model.config.to_dict():
        raise GptminiError(f"{base}: the run's base no longer has the run's model shape; export the merged model "
                           "without --adapter")
    c, out = ckpt.model.config, Path(out)
    export(base, out / "base", ckpt.template)  # the run's chat template, which its base may lack
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str((out / "base").resolve()),
              "r": spec["rank"], "lora_alpha": spec["alpha"], "lora_dropout": 0.0, "bias": "none",
              "use_rslora": False, "fan_in_fan_out": False, "inference_mode": True,  # scale = lora_alpha / r, as ours
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    with checkpoint.atomic_directory(out / "adapter") as tmp:
        save_file(peft_state(c, ours), str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out / "adapter"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptminiError(f"{path}: missing; not a Hugging Face model directory") from None
    except json.JSONDecodeError as exc:
        raise GptminiError(f"{path}: not valid JSON ({exc})") from None


def _hf_config(hf_dir: Path) -> GPTConfig:
    cfg = _read_json(hf_dir / "config.json")
    if cfg.get("model_type") != "llama":
        raise GptminiError(f"{hf_dir / 'config.json'}: model_type {cfg.get('model_type')!r} is not supported; "
                           "only Llama-family checkpoints (SmolLM, TinyLlama, ...) convert exactly")
    unsupported = [k for k in ("attention_bias", "mlp_bias") if cfg.get(k)]
    if cfg.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={cfg['hidden_act']}")
    rope = cfg.get("rope_parameters") or {}  # transformers 5 writes rope_theta (and any scaling) in here
    if cfg.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        unsupported.append("rope_scaling")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if head_dim * cfg["num_attention_heads"] != cfg["hidden_size"]:
        unsupported.append("head_dim * num_attention_heads != hidden_size")
    if unsupported:
        raise GptminiError(f"{hf_dir / 'config.json'}: unsupported Llama features: {', '.join(unsupported)}")
    return GPTConfig(vocab_size=cfg["vocab_size"], context_size=cfg.get("max_position_embeddings", 2048),
                     d_model=cfg["hidden_size"], n_heads=cfg["num_attention_heads"],
                     n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                     n_layers=cfg["num_hidden_layers"], mlp_hidden=cfg["intermediate_size"],
                     tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                     rope_theta=float(cfg.get("rope_theta") or rope.get("rope_theta", 10000.0)), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)))


def _hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(hf_dir.glob("model*.safetensors"))
    if not files:
        raise GptminiError(f"{hf_dir}: no model*.safetensors file (PyTorch .bin weights are not read: they need unpickling)")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise GptminiError(f"{f}: unreadable safetensors file ({exc})") from None
    return state


def from_hf_state(state: dict[str, torch.Tensor], config: GPTConfig, where: Path) -> dict[str, torch.Tensor]:
    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise GptminiError(f"{where}: weights lack {name}")
        return state[name].float()

    ours = {"embed.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if not config.tie_embeddings:
        ours["lm_head.weight"] = take("lm_head.weight")
    for i in range(config.n_layers):
        ours.update({name: take(hf) for name, hf in _layer_names(i).items()})
        hf = f"model.layers.{i}."
        ours[f"blocks.{i}.attn.qkv.weight"] = torch.cat([take(hf + f"self_attn.{p}_proj.weight") for p in "qkv"])
        ours[f"blocks.{i}.mlp.gate_up.weight"] = torch.cat([take(hf + f"mlp.{p}_proj.weight") for p in ("gate", "up")])
    return ours


def _hf_specials(hf_dir: Path) -> dict[str, str | None]:
    """End-of-text, padding, unknown and BOS as the model's own config names them: tokenizer_config.json
    (its eos_token, else generation_config.json's eos_token_id); BOS only where the model adds one
    (add_bos_token, else tokenizer.json's post-processor puts it in front)."""
    tok_config = _read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
    spec = _read_json(hf_dir / "tokenizer.json")
    specials = {role: _token_text(tok_config.get(key)) for role, key in
                (("eot", "eos_token"), ("pad", "pad_token"), ("unk", "unk_token"), ("bos", "bos_token"))}
    if not specials["eot"] and (hf_dir / "generation_config.json").is_file():
        eos = _read_json(hf_dir / "generation_config.json").get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        by_id = {i: t for t, i in spec["model"].get("vocab", {}).items()} | {t["id"]: t["content"] for t in
                                                                           spec.get("added_tokens", [])}
        specials["eot"] = by_id.get(eos)
    if not specials["eot"]:
        raise GptminiError(f"{hf_dir / 'tokenizer_config.json'}: no eos_token (nor generation_config.json's "
                           "eos_token_id); gptmini needs one to stop generation")
    if not tok_config.get("add_bos_token", _post_processor_adds(spec, specials["bos"])):
        specials["bos"] = None
    return specials


def _post_processor_adds(spec: dict, token: str | None) -> bool:
    """Whether tokenizer.json's post-processor (a TemplateProcessing, alone or in a Sequence) starts a text with `token`."""
    pp = spec.get("post_processor") or {}
    single = pp.get("single") or [item for p in pp.get("processors", []) for item in p.get("single", [])]
    return bool(token) and bool(single) and single[0].get("SpecialToken", {}).get("id") == token


def is_hf_dir(path: Path) -> bool:
    """A transformers model directory: a config.json with a model_type and no gptmini "model" section."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and "model" not in config


def checkpoint_config(hf_dir: Path) -> dict:
    """A transformers Llama directory's config as a gptmini checkpoint's (checkpoint.read_config reads both)."""
    return {"model": _hf_config(hf_dir).to_dict(), "tokenizer": {"specials": _hf_specials(hf_dir)},
            "kind": "imported", "source": {"hf_dir": str(hf_dir)}}


def hf_state(hf_dir: Path, config: GPTConfig) -> dict[str, torch.Tensor]:
    """The directory's weights under our names (checkpoint.load on a transformers directory)."""
    return from_hf_state(_hf_weights(hf_dir), config, hf_dir)


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """A local transformers Llama checkpoint -> a gptmini checkpoint (sft, eval, chat, serve work on it; they
    also take the directory itself, converted in memory each time)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise GptminiError(f"{hf_dir}: no such directory")
    if not is_hf_dir(hf_dir):
        _hf_config(hf_dir)  # says what is wrong with its config.json
    ckpt = checkpoint.load(hf_dir)
    return checkpoint.save(out, ckpt.model, ckpt.tokenizer, ckpt.meta)


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value
