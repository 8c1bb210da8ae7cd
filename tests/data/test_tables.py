"""Parquet files, folders of shards and hf: datasets read as the other formats do, errors naming file and row."""
import json
import os
import subprocess
import sys

import pytest

from gptmini import GptminiError
from gptmini.data.preferences import read_pairs
from gptmini.data.records import read_examples

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROWS = [{"instruction": "Olá", "response": "Oi!"}, {"instruction": "Quanto é 2+2?", "response": "4"}]
EXPECTED = [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["response"]}] for r in ROWS]


def parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_parquet_file_reads_as_jsonl_does(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    records = read_examples(parquet(tmp_path / "a.parquet", ROWS))
    assert [e.messages for e in records.examples] == [e.messages for e in read_examples(jsonl).examples] == EXPECTED
    assert records.examples[1].where == f"{tmp_path / 'a.parquet'}:row 2"


def test_hub_shapes_numbers_and_field_mapping(tmp_path):
    chat = parquet(tmp_path / "chat.parquet", [{"messages": [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]}])
    assert read_examples(chat).examples[0].messages == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    numbers = read_examples(parquet(tmp_path / "n.parquet", [{"pergunta": "2+2?", "resposta": 4}]))
    assert numbers.examples[0].messages[1]["content"] == "4" and "1 numbers read as text" in numbers.report()
    mapped = read_examples(parquet(tmp_path / "m.parquet", [{"q": "a", "a": "b"}]), "instruction=q,response=a")
    assert mapped.examples[0].messages[1]["content"] == "b"
    pairs = read_pairs(parquet(tmp_path / "p.parquet", [{"prompt": "p", "chosen": "c", "rejected": "r"}]))
    assert len(pairs.pairs) == 1


def test_a_folder_of_shards_in_name_order_with_rows_named_per_shard(tmp_path):
    parquet(tmp_path / "ds" / "data" / "train-00001-of-00002.parquet", ROWS[1:] + [{"instruction": "x", "response": None}])
    parquet(tmp_path / "ds" / "data" / "train-00000-of-00002.parquet", ROWS[:1])
    with pytest.raises(GptminiError, match=r"train-00001-of-00002.parquet:row 2: field 'response' has no value"):
        read_examples(tmp_path / "ds")
    parquet(tmp_path / "ds" / "data" / "train-00001-of-00002.parquet", ROWS[1:])
    assert [e.messages for e in read_examples(tmp_path / "ds").examples] == EXPECTED


def test_bad_parquet_missing_column_and_empty_folder_are_one_line_each(tmp_path):
    good = parquet(tmp_path / "good.parquet", ROWS)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-20])  # a download that stopped early
    with pytest.raises(GptminiError, match=r"cut.parquet: not a readable parquet file \(.*\); was it downloaded completely"):
        read_examples(cut)
    faq = parquet(tmp_path / "faq.parquet", [{"pergunta": "a", "answer": "b"}])
    with pytest.raises(GptminiError, match=r"faq.parquet:row 1: record lacks field 'resposta' \(it has: 'pergunta', "
                                           r"'answer'\); check --fields"):
        read_examples(faq, "instruction=pergunta,response=resposta")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptminiError, match=r"empty: a folder, but it holds no .parquet shards"):
        read_examples(tmp_path / "empty")


def test_hf_prefix_loads_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "local_ds"
    parquet(folder / "train.parquet", ROWS)
    records = read_examples(f"hf:{folder}")  # datasets takes a local folder as it takes OWNER/NAME
    assert [e.messages for e in records.examples] == EXPECTED
    assert records.examples[0].where == f"hf:{folder}:train:row 1"
    with pytest.raises(GptminiError, match=r"hf:.*:validation: cannot load \(ValueError: .*split"):
        read_examples(f"hf:{folder}:validation")


def test_hf_offline_without_a_cached_copy_says_what_it_needs(tmp_path):
    pytest.importorskip("datasets")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    out = subprocess.run([sys.executable, "-m", "gptmini.cli", "sft", "--data", "hf:nicholasKluge/instruct-aira-dataset-v2",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2
    error = out.stderr.strip().splitlines()[-1]
    assert "hf:nicholasKluge/instruct-aira-dataset-v2: not in the local datasets cache" in error
    assert "needs the network once" in error and "--data FOLDER" in error
    assert not (tmp_path / "run").exists()
