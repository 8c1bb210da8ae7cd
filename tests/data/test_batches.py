import torch

from gptmini import GPTConfig, GPTMini, Tokenizer, get_template
from gptmini.data.batches import ExampleBatches, fit_to_context
from gptmini.data.records import read_examples
from gptmini.model import IGNORE_INDEX
from gptmini.sft import encode_examples

from .test_records import SHARED


def test_example_logits_are_the_same_alone_or_batched():
    torch.manual_seed(0)
    model = GPTMini(GPTConfig(vocab_size=40, context_size=32, d_model=32, n_heads=4, n_layers=2)).eval()
    seqs = [(list(range(1, n)), list(range(1, n))) for n in (6, 20, 13)]
    batches = ExampleBatches(seqs, batch_size=3, seed=0, pad_id=0)
    idx, targets = batches.collate([0, 1, 2])
    together, _ = model(idx)
    for row, (ids, _) in enumerate(seqs):
        alone, _ = model(torch.tensor([ids[:-1]]))
        assert torch.allclose(together[row, :len(ids) - 1], alone[0], atol=1e-5)
        assert (targets[row, len(ids) - 1:] == IGNORE_INDEX).all()  # padding is never trained


def test_padding_waste_on_pira_is_under_10_percent():
    records = read_examples(SHARED / "pira_pt_train.jsonl", "instruction=pergunta,response=resposta")
    tok = Tokenizer.train_char(m["content"] for e in records.examples for m in e.messages)
    seqs, outcomes = encode_examples(records.examples, tok, get_template(), 256)
    batches = ExampleBatches(seqs, batch_size=16, seed=0, pad_id=tok.pad_id)
    assert batches.padding_waste() < 0.10
    assert sum(outcomes.values()) == 2058 and outcomes["truncated"] > 0  # nothing dropped silently


def test_batches_resume_at_the_same_position():
    seqs = [([i] * (2 + i % 5), [i] * (2 + i % 5)) for i in range(50)]
    a = ExampleBatches(seqs, 4, seed=3, pad_id=0)
    for _ in range(17):  # crosses an epoch boundary (13 batches per epoch)
        a.next()
    b = ExampleBatches(seqs, 4, seed=3, pad_id=0)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        assert all(torch.equal(x, y) for x, y in zip(a.next(), b.next()))


def test_every_example_appears_once_per_epoch():
    seqs = [([i, i], [i, i]) for i in range(1, 30)]
    batches = ExampleBatches(seqs, 4, seed=0, pad_id=0)
    seen = sorted(int(v) for _ in range(batches.batches_per_epoch) for v in batches.next()[0][:, 0] if v)
    assert seen == list(range(1, 30))


def test_truncation_keeps_the_response_and_the_end_of_the_prompt():
    ids = list(range(30))
    labels = [IGNORE_INDEX] * 20 + ids[20:]
    (kept,), outcome = fit_to_context(ids, labels, 16)
    assert outcome == "truncated" and kept[0] == ids[14:] and kept[1][6:] == ids[20:]


def test_windows_train_every_response_token_exactly_once():
    ids = list(range(100))
    labels = [IGNORE_INDEX] * 10 + ids[10:]
    windows, outcome = fit_to_context(ids, labels, 16, policy="window")
    assert outcome == "windowed" and all(len(w) <= 16 for w, _ in windows)
    trained = [label for w, lab in windows for label in lab[1:] if label != IGNORE_INDEX]
    assert trained == ids[10:]
    for w, lab in windows:  # each label sits on its own token
        assert all(label == tok for tok, label in zip(w, lab) if label != IGNORE_INDEX)
