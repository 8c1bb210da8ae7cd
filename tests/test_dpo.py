import json
import math
import warnings

import pytest
import torch

from gptmini import Engine, GPTConfig, GPTMini, SamplingParams, Tokenizer, get_template, load, save
from gptmini.cli import main
from gptmini.data.batches import PairBatches
from gptmini.data.corpus import ASSETS
from gptmini.data.preferences import Pair, read_pairs
from gptmini.dpo import DPOLoss, cache_reference, dpo, encode_pair, pair_loss, sequence_logps
from gptmini.model import IGNORE_INDEX
from gptmini.pairs import most_similar

RECORDS = [json.loads(line) for line in (ASSETS / "instructions.jsonl").read_text(encoding="utf-8").splitlines()[:64:4]]
TEMPLATE = get_template()
RUN = {"max_steps": 6, "batch_size": 4, "log_every": 2, "eval_every": 3, "save_every": 3, "show_progress": False}


def as_pair(i: int) -> Pair:
    record, other = RECORDS[i], RECORDS[(i + 3) % len(RECORDS)]
    return Pair([{"role": "user", "content": record["instruction"]}], [{"role": "assistant", "content": record["response"]}],
                [{"role": "assistant", "content": other["response"]}], f"x:{i}")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tok = Tokenizer.train_char([r["instruction"] + r["response"] for r in RECORDS] + [TEMPLATE.prompt])
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=tok.vocab_size, context_size=256, d_model=32, n_heads=4, n_layers=2)).eval()
    save(root / "base", model, tok, {"kind": "sft", "template": TEMPLATE.to_dict()})
    rows = [{"prompt": r["instruction"], "chosen": r["response"], "rejected": RECORDS[(i + 3) % len(RECORDS)]["response"]}
            for i, r in enumerate(RECORDS)]
    (root / "prefs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return root, model, tok


def weights(path):
    return load(path).model.state_dict()


def test_both_trl_formats_are_read_and_pairs_without_a_difference_are_skipped(tmp_path):
    conversational = {"prompt": [{"role": "system", "content": "Seja breve."}, {"role": "user", "content": "Oi"}],
                      "chosen": [{"role": "assistant", "content": "Olá!"}],
                      "rejected": [{"role": "assistant", "content": "Tchau."}]}
    lines = [{"prompt": "Oi", "chosen": "Olá!", "rejected": "Tchau."}, conversational,
             {"prompt": "Oi", "chosen": "Olá!", "rejected": "Olá!"}, {"prompt": "Oi", "chosen": " ", "rejected": "x"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    pairs = read_pairs(tmp_path / "p.jsonl")
    assert [p.prompt[-1]["content"] for p in pairs.pairs] == ["Oi", "Oi"] and pairs.pairs[1].prompt[0]["role"] == "system"
    assert pairs.report() == (f"2 pairs (shapes: standard 1, conversational 1); skipped 1 with an empty field (first: "
                              f"{tmp_path / 'p.jsonl'}:4: field 'chosen' is empty); skipped 1 whose chosen equals "
                              f"rejected (first: {tmp_path / 'p.jsonl'}:3)")
    (tmp_path / "p.csv").write_text("pergunta;boa;ruim\nOi;Olá!;Tchau.\n", encoding="utf-8")
    pairs = read_pairs(tmp_path / "p.csv", "prompt=pergunta,chosen=boa,rejected=ruim").pairs
    assert pairs[0].rejected == [{"role": "assistant", "content": "Tchau."}]


def test_answers_are_masked_exactly_as_sft_masks_them(base):
    _, _, tok = base
    pair = as_pair(0)
    (chosen, rejected), outcome = encode_pair(pair, tok, TEMPLATE, 257)
    assert outcome == "ok"
    assert chosen == TEMPLATE.encode(tok, pair.prompt + pair.chosen)
    assert rejected == TEMPLATE.encode(tok, pair.prompt + pair.rejected)
    trained = [i for i, label in zip(chosen[0], chosen[1]) if label != IGNORE_INDEX]
    assert trained == tok.encode(pair.chosen[0]["content"]) + [tok.eot_id]


def test_label_smoothing_makes_the_loss_least_at_a_finite_margin():
    delta = torch.linspace(-10, 10, 20001)
    zero = torch.zeros_like(delta)
    losses = pair_loss(delta, zero, zero, zero, beta=1.0, label_smoothing=0.2).losses
    assert delta[losses.argmin()].item() == pytest.approx(math.log(0.8 / 0.2), abs=1e-3)  # cDPO's optimum
    assert pair_loss(delta, zero, zero, zero, beta=1.0).losses.argmin() == len(delta) - 1  # plain DPO: none


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_loss_rewards_and_logps_equal_trl_dpo_trainer(base, tmp_path, loss):
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from gptmini.hf import export

    root, reference, tok = base
    torch.manual_seed(1)
    policy = GPTMini(reference.config).eval()
    with torch.no_grad():  # a policy some way from its reference, so that the rewards are not zero
        policy.load_state_dict({k: v + 0.02 * torch.randn_like(v) for k, v in reference.state_dict().items()})
    save(tmp_path / "policy", policy, tok, {"template": TEMPLATE.to_dict()})
    export(root / "base", tmp_path / "hf_reference")
    export(tmp_path / "policy", tmp_path / "hf_policy")
    pairs = [encode_pair(as_pair(i), tok, TEMPLATE, 257)[0] for i in range(8)]
    batches = PairBatches(pairs, 8, 0, tok.pad_id)
    cache_reference(reference, batches)
    with torch.no_grad():
        ours, metrics = DPOLoss(tok.pad_id, 0.1, loss).loss(policy, batches.collate(list(range(8))), torch.device("cpu"))

    warnings.filterwarnings("ignore")
    # fp32 like ours: with bf16 (its default where supported) accelerate autocasts the reference model's forward
    config = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss], report_to=[], use_cpu=True,
                       bf16=False, disable_tqdm=True)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "hf_policy"),
                         ref_model=AutoModelForCausalLM.from_pretrained(tmp_path / "hf_reference"), args=config,
                         train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
                         processing_class=AutoTokenizer.from_pretrained(tmp_path / "hf_policy"))
    starts = [chosen[1].index(next(label for label in chosen[1] if label != IGNORE_INDEX)) for chosen, _ in pairs]
    features = [{"prompt_ids": c[0][:n], "chosen_ids": c[0][n:], "rejected_ids": r[0][n:]} for (c, r), n in zip(pairs, starts)]
    trainer.model.train()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, DataCollatorForPreference(pad_token_id=tok.pad_id)(features))
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert ours.item() / 8 == pytest.approx(theirs.item(), abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected"):
        assert metrics[name] / 8 == pytest.approx(logged[name], abs=1e-5), name
    assert abs(metrics["rewards/margins"]) > 1e-3  # the comparison is not between zeros


def test_cached_reference_log_probs_give_the_live_reference_loss(base):
    _, reference, tok = base
    pairs = [encode_pair(as_pair(i), tok, TEMPLATE, 257)[0] for i in range(len(RECORDS))]
    batches = PairBatches(pairs, 4, 0, tok.pad_id)
    cache_reference(reference, batches)  # in length-sorted batches: other padding, other order than training's
    torch.manual_seed(2)
    policy = GPTMini(reference.config).eval()
    objective = DPOLoss(tok.pad_id)
    for _ in range(3):
        batch = batches.next()
        with torch.no_grad():
            cached, _ = objective.loss(policy, batch, torch.device("cpu"))
            live_ref = sequence_logps(reference, batch.idx, batch.targets)
            chosen, rejected = sequence_logps(policy, batch.idx, batch.targets).chunk(2)
        live = pair_loss(chosen, rejected, *live_ref.chunk(2)).losses.sum()
        assert cached.item() == pytest.approx(live.item(), abs=1e-5)


def test_lr_zero_changes_nothing(base, tmp_path):
    root, _, _ = base
    summary = dpo(tmp_path / "run", root / "prefs.jsonl", str(root / "base"), train={**RUN, "lr": 0.0})
    assert summary["steps"] == 6
    before, after = weights(root / "base"), weights(tmp_path / "run" / "last")
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_loss"] == pytest.approx(math.log(2), abs=1e-5) and abs(r["rewards/margins"]) < 1e-6 for r in rows)


@pytest.mark.parametrize("lora_rank", [None, 2])
def test_resume_after_a_kill_ends_with_identical_weights(base, tmp_path, interrupt_at, lora_rank):
    root, _, _ = base
    args = (root / "prefs.jsonl", str(root / "base"))
    dpo(tmp_path / "straight", *args, val_fraction=0.25, train=RUN, lora_rank=lora_rank)
    interrupt_at(4)
    assert dpo(tmp_path / "resumed", *args, val_fraction=0.25, train=RUN, lora_rank=lora_rank)["steps"] == 4
    interrupt_at(None)
    assert dpo(tmp_path / "resumed", root / "prefs.jsonl", resume=True)["steps"] == 6
    a, b = weights(tmp_path / "straight" / "last"), weights(tmp_path / "resumed" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load(tmp_path / "resumed" / "best").meta["training"] == load(tmp_path / "straight" / "best").meta["training"]
    assert not all(torch.equal(a[k], v) for k, v in weights(root / "base").items())  # it did train
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6] and "val_rewards/accuracies" in rows[-1]
    assert (tmp_path / "resumed" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_most_similar_instruction_has_another_answer():
    texts = ["O que é inteligência artificial?", "Defina IA", "O que é a inteligência de um modelo?",
             "Qual é a capital da França?"]
    assert most_similar(texts, ["ia", "ia", "modelo", "frança"])[:3] == [2, 2, 0]  # never its own answer's group
    assert most_similar(["a", "b"], ["x", "x"]) == [None, None]


def test_pairs_then_dpo_from_the_command_line_give_a_checkpoint_others_use(base, tmp_path, capsys):
    root, _, _ = base
    (tmp_path / "instr.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS),
                                          encoding="utf-8")
    assert main(["pairs", "--model", str(root / "base"), "--data", str(tmp_path / "instr.jsonl"), "--out",
                 str(tmp_path / "prefs.jsonl"), "--similar", "--max-new-tokens", "8", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * len(RECORDS)  # a random model is never right: every record twice
    assert all(r["chosen"] != r["rejected"] for r in rows)
    assert f"{2 * len(RECORDS)} written" in capsys.readouterr().out
    assert main(["dpo", "--base", str(root / "base"), "--data", str(tmp_path / "prefs.jsonl"), "--out",
                 str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4", "--no-progress", "--loss", "ipo"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])
    assert summary["steps"] == 2 and summary["pairs_per_s"] > 0
    ckpt = load(tmp_path / "run" / "last")
    assert ckpt.meta["kind"] == "dpo" and ckpt.meta["dpo"]["loss"] == "ipo" and ckpt.template == TEMPLATE
    engine = Engine(ckpt.model, ckpt.tokenizer, ckpt.template)
    assert engine.generate([engine.encode_prompt("Oi")], SamplingParams(max_new_tokens=3))[0].token_ids
