import json

import pytest
import torch

from gptmini import GPTConfig, GPTMini, GptminiError, get_template, load, save
from gptmini.checkpoint import atomic_directory


def test_save_load_gives_identical_logits_and_tokenizer(tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "ckpt", tiny_model, char_tokenizer, {"template": get_template().to_dict(), "training": {"steps": 3}})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    ckpt = load(tmp_path / "ckpt")
    idx = torch.randint(0, char_tokenizer.vocab_size, (2, 16))
    assert torch.equal(ckpt.model(idx)[0], tiny_model(idx)[0])
    assert ckpt.tokenizer.vocab() == char_tokenizer.vocab()
    assert ckpt.template == get_template("comando")
    assert ckpt.meta["training"] == {"steps": 3}
    assert ckpt.model.lm_head.weight is ckpt.model.embed.weight


def test_untied_model_round_trip(tmp_path, char_tokenizer):
    model = GPTMini(GPTConfig(vocab_size=char_tokenizer.vocab_size, d_model=32, n_heads=2, n_layers=1, tie_embeddings=False)).eval()
    save(tmp_path / "c", model, char_tokenizer)
    idx = torch.randint(0, char_tokenizer.vocab_size, (1, 8))
    assert torch.equal(load(tmp_path / "c").model(idx)[0], model(idx)[0])


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, tiny_model, char_tokenizer):
    save(tmp_path / "ckpt", tiny_model, char_tokenizer, {"training": {"steps": 1}})

    def crash(_tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save(tmp_path / "ckpt", tiny_model, char_tokenizer, {"training": {"steps": 2}}, write_extra=crash)
    assert load(tmp_path / "ckpt").meta["training"] == {"steps": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind


def test_atomic_directory_replaces_existing(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new.txt"]


def test_clear_errors(tmp_path, tiny_model, char_tokenizer):
    with pytest.raises(GptminiError, match="checkpoint directory not found"):
        load(tmp_path / "missing")
    save(tmp_path / "c", tiny_model, char_tokenizer)
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(GptminiError, match="model.safetensors: unreadable or corrupted"):
        load(tmp_path / "c")
    save(tmp_path / "c", tiny_model, char_tokenizer)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["model"]["d_model"] = 64
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptminiError, match="weights do not match .*config.json: .*shape"):
        load(tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(GptminiError, match="config.json: missing"):
        load(tmp_path / "c")


def test_loading_never_unpickles(tmp_path, tiny_model, char_tokenizer, monkeypatch):
    save(tmp_path / "c", tiny_model, char_tokenizer)

    def refuse(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    import pickle
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load(tmp_path / "c")


def test_a_run_folder_stands_for_its_last_checkpoint(tmp_path, tiny_model, char_tokenizer, capsys):
    save(tmp_path / "run" / "last", tiny_model, char_tokenizer)
    ckpt = load(tmp_path / "run")
    assert ckpt.model.config == tiny_model.config
    assert f"{tmp_path / 'run'} is a run folder; using its last checkpoint" in capsys.readouterr().err
    with pytest.raises(GptminiError, match="config.json: missing"):
        load(tmp_path)  # a folder that holds neither a checkpoint nor a run: still the plain error
