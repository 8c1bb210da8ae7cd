"""The loss-mask picture: every token's colour is the role its label gives it."""
import json

import matplotlib.colors
import matplotlib.image
import pytest

from gptmini import Tokenizer, get_template
from gptmini.cli import main
from gptmini.data.corpus import ASSETS
from gptmini.model import IGNORE_INDEX
from gptmini.plots import MASK_COLOURS, draw_mask, mask_layout, mask_roles

SEED = [json.loads(line) for line in (ASSETS / "seed.jsonl").read_text(encoding="utf-8").splitlines()]


def conversation(record: dict) -> list[dict]:
    return [{"role": "user", "content": record["instruction"]}, {"role": "assistant", "content": record["response"]}]


@pytest.fixture
def encoded():
    """The course's first two examples as sft encodes them (the first is the shorter: a batch pads it)."""
    template = get_template("comando")
    tok = Tokenizer.train_char([template.prompt] + [r["instruction"] + r["response"] for r in SEED])
    return tok, [template.encode(tok, conversation(r)) for r in SEED[:2]]


def expected_role(labels: list[int], ids: list[int], eot_id: int, position: int) -> str:
    if position >= len(ids):
        return "padding"
    if labels[position] == IGNORE_INDEX:
        return "prompt"
    return "end-of-text" if ids[position] == eot_id else "answer"


def test_roles_are_the_labels_of_template_encode(encoded):
    tok, [(ids, labels), (longer, _)] = encoded
    prompt = len(tok.encode("### Comando:\nExplique Machine Learning\n\n### Resposta:\n"))
    answer = len(tok.encode(SEED[0]["response"]))
    roles = mask_roles(ids, labels, tok.eot_id, width=len(longer))
    assert roles == (["prompt"] * prompt + ["answer"] * answer + ["end-of-text"]
                     + ["padding"] * (len(longer) - len(ids)))
    assert [role in ("answer", "end-of-text") for role in roles[:len(ids)]] == [label != IGNORE_INDEX for label in labels]


def test_the_png_pixels_have_each_tokens_colour(encoded, tmp_path):
    tok, examples = encoded
    fig = draw_mask(examples, tok, tmp_path / "mask.png", captions=["one", "two"], columns=60)
    pixels = matplotlib.image.imread(tmp_path / "mask.png")[..., :3]
    ax, height = fig.axes[0], pixels.shape[0]
    cells, _ = mask_layout(examples, tok, 60, captioned=True)
    width = max(len(ids) for ids, _ in examples)
    expected = [expected_role(labels, ids, tok.eot_id, p) for ids, labels in examples for p in range(width)]
    assert len(cells) == len(expected)
    seen = set()
    for (x, line, w, _, _), role in zip(cells, expected):
        px, py = ax.transData.transform((x + w / 2, line + 0.12))  # above the text, inside the cell
        colour = pixels[int(height - py), int(px)]
        assert colour == pytest.approx(matplotlib.colors.to_rgb(MASK_COLOURS[role]), abs=2 / 255), (x, line, role)
        seen.add(role)
    assert seen == set(MASK_COLOURS)


def test_sft_show_masks_png_writes_the_picture(tmp_path, capsys):
    png = tmp_path / "mask.png"
    assert main(["sft", "--show-masks", "2", "--data", str(ASSETS / "seed.jsonl"), "--png", str(png)]) == 0
    assert f"mask picture: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--png", "x.png"], "--png draws the masks that --show-masks N prints: give both"),
    (["--show-masks", "1", "--png", "no/such/folder/x.png"], "the folder"),
])
def test_png_mistakes_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sft", "--data", str(ASSETS / "seed.jsonl"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
