import gzip
import lzma

import numpy as np
import pytest

from gptmini import GptminiError, Tokenizer
from gptmini.data.corpus import DEFAULT_CORPUS, corpus_files, iter_blocks, prepare

TEXT = "".join(f"Parágrafo {i}: a atenção não é ação.\n\n" for i in range(400))


def test_reads_plain_gz_xz_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("um\n\n", encoding="utf-8")
    (tmp_path / "d" / "b.txt.gz").write_bytes(gzip.compress("dois ção\n\n".encode()))
    (tmp_path / "d" / "c.txt.xz").write_bytes(lzma.compress("três\n\n".encode()))
    (tmp_path / "d" / "ignored.md").write_text("x")
    files = corpus_files([tmp_path / "d"])
    assert [f.name for f in files] == ["a.txt", "b.txt.gz", "c.txt.xz"]
    assert "".join(text for _, text in iter_blocks(files)) == "um\n\ndois ção\n\ntrês\n\n"


def test_prepare_splits_separates_files_and_reuses_its_work(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text("fim", encoding="utf-8")
    files = corpus_files([tmp_path / "a.txt", tmp_path / "b.txt"])
    tok = Tokenizer.train_char([TEXT + "fim"])
    corpus = prepare(files, tok, tmp_path / "data", val_fraction=0.1, show_progress=False)
    assert corpus.train.dtype == np.uint16
    assert len(corpus.train) + len(corpus.val) == len(TEXT) + 3 + 1  # + one end-of-text between files
    assert 0.05 < len(corpus.val) / len(TEXT) < 0.15
    assert list(corpus.train[-4:]) == [tok.eot_id] + tok.encode("fim")
    assert tok.decode(corpus.val[:40].tolist()) in TEXT
    stamp = (tmp_path / "data" / "train.bin").stat().st_mtime_ns
    prepare(files, tok, tmp_path / "data", val_fraction=0.1, show_progress=False)
    assert (tmp_path / "data" / "train.bin").stat().st_mtime_ns == stamp


def test_non_utf8_file_names_the_byte_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("abc ação".encode("latin-1"))
    with pytest.raises(GptminiError, match=r"latin1.txt: not UTF-8 text: invalid byte at offset 5"):
        list(iter_blocks([bad]))


def test_missing_and_empty_inputs_are_clear(tmp_path):
    with pytest.raises(GptminiError, match="nope.txt: no such file or folder"):
        corpus_files([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptminiError, match="folder holds no"):
        corpus_files([tmp_path / "empty"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(GptminiError, match="corpus is empty"):
        prepare([tmp_path / "empty.txt"], Tokenizer.train_char(["a"]), tmp_path / "data", show_progress=False)


def test_embedded_corpus_is_substantial_portuguese():
    files = corpus_files([DEFAULT_CORPUS])
    text = "".join(t for _, t in iter_blocks(files))
    assert len(text.encode()) >= 50_000
    for word in ("inteligência artificial", "atenção", "modelo de linguagem", "machine learning"):
        assert word in text.lower()


@pytest.mark.parametrize("case", ["missing", "tiny", "vocab", "latin1"])
def test_pretrain_bad_input_is_one_line_without_traceback(tmp_path, case, run_main):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("só isto")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("ação".encode("latin-1"))
    args = {"missing": ["--data", tmp_path / "nope.txt"],
            "tiny": ["--data", tiny, "--tokenizer", "char"],
            "vocab": ["--data", tiny, "--vocab-size", "100"],
            "latin1": ["--data", latin]}[case]
    code, stderr = run_main("pretrain", "--out", tmp_path / "run", *args)
    assert code == 2
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("gptmini pretrain: error: "), stderr
    assert stderr.rstrip().endswith(errors[0])  # progress bars may precede it, nothing follows
    assert {"missing": "nope.txt: no such file", "tiny": "fewer than one context window",
            "vocab": "too small", "latin1": "offset 1"}[case] in errors[0]
    assert "Traceback" not in stderr
