"""GGUF export: a gptmini checkpoint as one file that llama.cpp, Ollama and LM Studio load.

It writes what llama.cpp's own converter (convert_hf_to_gguf.py) writes for the transformers Llama
that hf.py exports: Llama metadata, tensors under llama.cpp's names, the byte-level BPE vocabulary,
merges and special tokens, and the chat template. Two details make the logits equal ours:
- llama.cpp's Llama rotates adjacent pairs (x0, x1), (x2, x3), ... where we (and transformers)
  rotate the two halves of a head; permuting the rows of q and k within each head, as the
  converter does, maps one onto the other (q.k is unchanged by the same permutation of both).
- the pre-tokenizer: llama.cpp does not run tokenizer.json's, it picks a built-in regex by the
  name in `tokenizer.ggml.pre`. Ours is GPT-2's ByteLevel split, which llama.cpp calls "gpt-2".
A SentencePiece-style base (TeenyTinyLlama, Tucano: BPE with byte fallback and "▁") goes as llama.cpp's
"llama" (SPM) vocabulary instead: its tokeniser merges the adjacent pair whose token scores highest, so
each token scores minus the rank of the merge that makes it (BPE's order), <0xNN> tokens are bytes, and
the BOS and the "▁" in front of a text are added as the model's tokenizer adds them.
Beside the file goes an Ollama Modelfile (FROM, TEMPLATE, stop, context) for `ollama create`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import gguf
import numpy as np
import torch

from . import checkpoint
from .data.templates import Template
from .errors import GptminiError
from .hf import chat_template, to_hf_state
from .model import GPTConfig, GPTMini
from .tokenizer import Tokenizer, adds_prefix

DTYPES = ("f32", "f16", "q8_0")
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
PRE_TOKENIZER = "gpt-2"  # llama.cpp's name for GPT-2's split regex, the one a ByteLevel pre-tokenizer applies
MODELFILE = "Modelfile"
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")  # a byte-fallback token


def rope_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head reordered (0, d/2, 1, d/2 + 1, ...): rotate-half RoPE -> adjacent-pair RoPE."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, -1).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(model: GPTMini) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's tensor names (the transformers names, mapped by gguf's own table)."""
    c = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.n_layers)
    tensors = {}
    for hf_name, tensor in to_hf_state(model).items():
        if hf_name.endswith("q_proj.weight"):
            tensor = rope_permute(tensor, c.n_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = rope_permute(tensor, c.n_kv_heads)
        tensors[names.get_name(hf_name, try_suffixes=(".weight",))] = tensor.float().contiguous()
    return tensors  # no output.weight when tied: llama.cpp then reads the head from token_embd


def encoded(tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """1-D tensors (norms) stay f32, as llama.cpp's converter keeps them; q8_0 needs rows in blocks
    of 32 and falls back to f16 for a tensor whose rows are not (as the converter does)."""
    data = tensor.numpy()
    if tensor.ndim == 1 or dtype == "f32":
        return data, gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and tensor.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def check_tokenizer(tokenizer: Tokenizer, where: Path) -> dict:
    """tokenizer.json as a dict, when llama.cpp tokenises exactly as it does; a clear refusal otherwise."""
    spec = json.loads(tokenizer.backend.to_str())
    if tokenizer.kind == "spm":
        return spec
    if tokenizer.kind == "char":
        raise GptminiError(f"{where}: character-level tokenizer; GGUF runtimes (llama.cpp, Ollama) only know "
                           "subword vocabularies, so this model cannot be exported to GGUF. Train it with "
                           "--tokenizer bpe (the default), or use `gptmini export --format hf`")
    pre = spec.get("pre_tokenizer") or {}
    if (spec.get("normalizer") or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space")
            or not pre.get("use_regex", True) or spec["model"].get("byte_fallback")):
        raise GptminiError(f"{where}: the tokenizer is not a plain byte-level BPE (pre-tokenizer "
                           f"{pre.get('type')!r}, normalizer {spec.get('normalizer')!r}); only gptmini's own BPE is "
                           "known to tokenise identically in llama.cpp. Use `gptmini export --format hf` and "
                           "llama.cpp's convert_hf_to_gguf.py")
    if not spec["model"].get("merges"):
        raise GptminiError(f"{where}: the BPE tokenizer has no merges (trained on too little text); llama.cpp "
                           "cannot load a BPE vocabulary without them")
    return spec


def token_types(tokenizer: Tokenizer, spec: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts and llama.cpp token types; rows of the embedding beyond the tokenizer get placeholder
    names, as the converter gives them."""
    by_id = {i: token for token, i in tokenizer.vocab().items()}
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}

    def kind(i: int) -> int:
        if i not in by_id:
            return gguf.TokenType.UNUSED
        if i == tokenizer.unk_id and tokenizer.kind == "spm":
            return gguf.TokenType.UNKNOWN
        if i in special:
            return gguf.TokenType.CONTROL
        return gguf.TokenType.BYTE if tokenizer.kind == "spm" and BYTE_TOKEN.fullmatch(by_id[i]) else gguf.TokenType.NORMAL
    return [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)], [kind(i) for i in range(vocab_size)]


def add_spm_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, spec: dict, vocab_size: int) -> None:
    """A SentencePiece-style BPE as llama.cpp's "llama" vocabulary (see the module's note on scores)."""
    tokens, types = token_types(tokenizer, spec, vocab_size)
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges_of(spec)):
        rank.setdefault(merge.replace(" ", "", 1), i)  # the first merge that makes a token is the one BPE applies
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(rank[t]) if t in rank else 0.0 for t in tokens])
    writer.add_token_types(types)
    add_special_ids(writer, tokenizer)
    writer.add_add_space_prefix(adds_prefix(spec))


def merges_of(spec: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]


def add_special_ids(writer: gguf.GGUFWriter, tokenizer: Tokenizer) -> None:
    # Without a BOS of our own, end-of-text stands in (as in GPT-2), never added in front of a prompt;
    # left unset, llama.cpp would take id 11, an ordinary token of ours.
    writer.add_bos_token_id(tokenizer.eot_id if tokenizer.bos_id is None else tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    if tokenizer.unk_id is not None:
        writer.add_unk_token_id(tokenizer.unk_id)
    writer.add_add_bos_token(tokenizer.bos_id is not None)
    writer.add_add_eos_token(False)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Tokenizer, spec: dict, vocab_size: int) -> None:
    if tokenizer.kind == "spm":
        return add_spm_tokenizer(writer, tokenizer, spec, vocab_size)
    tokens, types = token_types(tokenizer, spec, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges_of(spec))
    add_special_ids(writer, tokenizer)


def modelfile(gguf_name: str, template: Template | None, eos: str, context_size: int) -> str:
    """An Ollama Modelfile: the GGUF beside it, our template as a Go template, stop at end-of-text.

    The template uses .System, .Prompt and .Response only (no .Messages), so Ollama renders each
    past turn as system + prompt + response + end-of-text and the last one up to .Response, what
    our template does. `{{` in the template's own text would be read as a Go action: refused.
    """
    if template is None:
        body = "{{ .Prompt }}"
    else:
        parts = [template.system, template.prompt]
        if any("{{" in p or '"""' in p for p in parts if p):
            raise GptminiError(f"template {template.name!r}: its text holds '{{{{' or '\"\"\"', which an Ollama "
                               "Modelfile cannot quote; export --format hf instead")
        system = ("{{ if .System }}" + template.system.replace("{system}", "{{ .System }}") + "{{ end }}"
                  if template.system else "")
        body = system + template.prompt.replace("{instruction}", "{{ .Prompt }}") + "{{ .Response }}" + eos
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{body}"""\n'
            f'PARAMETER stop "{eos}"\n'
            f"PARAMETER num_ctx {context_size}\n")


def add_llama(writer: gguf.GGUFWriter, c: GPTConfig) -> None:
    """The architecture's hyperparameters, under the keys llama.cpp's Llama reads."""
    writer.add_vocab_size(c.vocab_size)
    writer.add_context_length(c.context_size)
    writer.add_embedding_length(c.d_model)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.mlp_hidden)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)


def export_gguf(model_dir: str | Path, out: str | Path, dtype: str = "f32") -> Path:
    """A gptmini BPE checkpoint -> `out` (GGUF, weights in `dtype`) and a Modelfile beside it."""
    if dtype not in DTYPES:
        raise GptminiError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    ckpt = checkpoint.load(model_dir)
    c, tok, out = ckpt.model.config, ckpt.tokenizer, Path(out)
    spec = check_tokenizer(tok, ckpt.path)
    eos = tok.id_to_token(tok.eot_id)
    ollama = modelfile(out.name, ckpt.template, eos, c.context_size)  # refuses before anything is written
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(out.stem)
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_llama(writer, c)
    add_tokenizer(writer, tok, spec, c.vocab_size)
    if ckpt.template:
        bos = tok.id_to_token(tok.bos_id) if tok.bos_id is not None else None
        writer.add_chat_template(chat_template(ckpt.template, eos, bos))
    for name, tensor in gguf_tensors(ckpt.model).items():
        data, qtype = encoded(tensor, dtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    try:  # written beside, renamed into place: a failed export never leaves a truncated .gguf
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    (out.parent / MODELFILE).write_text(ollama, encoding="utf-8")
    return out
