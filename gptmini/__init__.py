"""gptmini: from raw Portuguese text to an instruction-following assistant, in plain PyTorch."""
__version__ = "0.1.0"

from .checkpoint import Checkpoint, load, save  # noqa: E402
from .data.templates import Template, get_template  # noqa: E402
from .engine import Completion, Engine, SamplingParams, generate  # noqa: E402
from .errors import GptminiError  # noqa: E402
from .model import GPTConfig, GPTMini  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402

__all__ = [
    "Checkpoint", "Completion", "Engine", "GPTConfig", "GPTMini", "GptminiError", "SamplingParams",
    "Template", "Tokenizer", "generate", "get_template", "load", "save",
]
