"""Bridges to Hugging Face `transformers`: export to, and import from, the Llama layout.

GPTMini's block is Llama's (RMSNorm, rotate-half RoPE, SwiGLU, no biases), so the conversion is
a renaming plus two splits: our fused qkv projection into q/k/v, our fused gate_up into gate/up.
Nothing here imports `transformers`: the files are written and read directly.
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
from .model import GPTConfig, GPTMini
from .tokenizer import Tokenizer


def _layer_names(i: int) -> dict[str, str]:
    hf = f"model.layers.{i}."
    return {f"blocks.{i}.attn_norm.weight": hf + "input_layernorm.weight",
            f"blocks.{i}.attn.proj.weight": hf + "self_attn.o_proj.weight",
            f"blocks.{i}.mlp_norm.weight": hf + "post_attention_layernorm.weight",
            f"blocks.{i}.mlp.down.weight": hf + "mlp.down_proj.weight"}


def to_hf_state(model: GPTMini) -> dict[str, torch.Tensor]:
    c, ours = model.config, checkpoint.weights_state_dict(model)
    state = {"model.embed_tokens.weight": ours["embed.weight"], "model.norm.weight": ours["norm.weight"]}
    if not c.tie_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"]
    for i in range(c.n_layers):
        state.update({hf: ours[name] for name, hf in _layer_names(i).items()})
        q, k, v = ours[f"blocks.{i}.attn.qkv.weight"].split(
            (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim))
        gate, up = ours[f"blocks.{i}.mlp.gate_up.weight"].chunk(2)
        hf = f"model.layers.{i}."
        state.update({hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k,
                      hf + "self_attn.v_proj.weight": v, hf + "mlp.gate_proj.weight": gate, hf + "mlp.up_proj.weight": up})
    return {k: v.contiguous() for k, v in state.items()}


def chat_template(template: Template, eos: str) -> str:
    """The checkpoint's template as a Jinja chat template (what `apply_chat_template` renders)."""
    def piece(text: str, placeholder: str) -> str:
        before, _, after = text.partition(placeholder)
        return f"{{{{ {json.dumps(before)} }}}}{{{{ message['content'] }}}}{{{{ {json.dumps(after)} }}}}"

    system = piece(template.system, "{system}") if template.system else ""
    return ("{% for message in messages %}"
            f"{{% if message['role'] == 'system' %}}{system}"
            f"{{% elif message['role'] == 'user' %}}{piece(template.prompt, '{instruction}')}"
            f"{{% else %}}{{{{ message['content'] }}}}{{{{ {json.dumps(eos)} }}}}{{% endif %}}"
            "{% endfor %}")


def export(model_dir: str | Path, out: str | Path) -> Path:
    """A gptmini checkpoint -> a transformers LlamaForCausalLM directory (with tokenizer)."""
    ckpt = checkpoint.load(model_dir)
    c, tok = ckpt.model.config, ckpt.tokenizer
    eos, pad = tok.id_to_token(tok.eot_id), tok.id_to_token(tok.pad_id)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
              "hidden_size": c.d_model, "intermediate_size": c.mlp_hidden, "num_hidden_layers": c.n_layers,
              "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
              "max_position_embeddings": c.context_size, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
              "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": c.tie_embeddings,
              "initializer_range": 0.02, "torch_dtype": "float32", "eos_token_id": tok.eot_id,
              "pad_token_id": tok.pad_id, "bos_token_id": None}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
                        "model_max_length": c.context_size, "clean_up_tokenization_spaces": False}
    if tok.unk_id is not None:
        tokenizer_config["unk_token"] = tok.id_to_token(tok.unk_id)
    if ckpt.template:
        tokenizer_config["chat_template"] = chat_template(ckpt.template, eos)
    generation = {"eos_token_id": tok.eot_id, "pad_token_id": tok.pad_id, "do_sample": False,
                  "max_length": c.context_size}
    with checkpoint.atomic_directory(out) as tmp:
        save_file(to_hf_state(ckpt.model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name, data in (("config.json", config), ("tokenizer_config.json", tokenizer_config),
                           ("generation_config.json", generation)):
            (tmp / name).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        shutil.copy(Path(model_dir) / checkpoint.TOKENIZER, tmp / "tokenizer.json")
    return Path(out)


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
    if cfg.get("rope_scaling"):
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
                     rope_theta=float(cfg.get("rope_theta", 10000.0)), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)))


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


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """A local transformers Llama checkpoint -> a gptmini checkpoint (sft, eval, chat, serve work on it)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise GptminiError(f"{hf_dir}: no such directory")
    config = _hf_config(hf_dir)
    tok_config = _read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
    specials = {role: _token_text(tok_config.get(key)) for role, key in
                (("eot", "eos_token"), ("pad", "pad_token"), ("unk", "unk_token"))}
    if not specials["eot"]:
        raise GptminiError(f"{hf_dir / 'tokenizer_config.json'}: no eos_token; gptmini needs one to stop generation")
    tokenizer = Tokenizer.load(hf_dir / "tokenizer.json", specials)
    if tokenizer.vocab_size > config.vocab_size:
        raise GptminiError(f"{hf_dir}: tokenizer has {tokenizer.vocab_size} tokens, the model only {config.vocab_size}")
    model = checkpoint.build_model(config, from_hf_state(_hf_weights(hf_dir), config, hf_dir))
    return checkpoint.save(out, model, tokenizer, {"kind": "imported", "source": {"hf_dir": str(hf_dir)}})


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value
