import pytest
import torch

from gptmini import GPTConfig, GPTMini, Tokenizer

PT_TEXT = "Atenção, não é ação? O modelo de linguagem prevê a próxima palavra.\nÇÃO àéíóú ü ñ"


@pytest.fixture
def char_tokenizer() -> Tokenizer:
    return Tokenizer.train_char([PT_TEXT, "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ#:.,\n"])


@pytest.fixture
def tiny_model(char_tokenizer) -> GPTMini:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=char_tokenizer.vocab_size, context_size=64, d_model=32, n_heads=4, n_layers=2)
    return GPTMini(config).eval()
