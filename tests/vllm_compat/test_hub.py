"""Models by Hugging Face hub id, as in vLLM: `LLM(model="org/name", revision=..., download_dir=...)`.

No test touches the internet. The offline path reads a Hugging Face cache laid out by hand
(models--org--name/blobs, snapshots/<sha>, refs/main); the download path talks to a
stand-in for the hub on 127.0.0.1 (hub_stand_in.py) that serves the tiny test model.
huggingface_hub reads its HF_* variables once, at import, into `huggingface_hub.constants`,
so the fixtures set each one in the environment and in those constants alike.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from hub_stand_in import HubStandIn

from nbllm import LLM, SamplingParams
from nbllm.hub import HubModelError, is_repo_id
from nbllm.loader import resolve_model_path, resolve_tokenizer_path

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
SHA = "0123456789abcdef0123456789abcdef01234567"
NEEDED = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "chat_template.jinja"}


def _tokens(llm: LLM) -> list[int]:
    return llm.generate("Once upon a time", GREEDY, use_tqdm=False)[0].outputs[0].token_ids


@pytest.fixture(scope="module")
def reference_tokens(tiny_llama_path):
    with LLM(str(tiny_llama_path), num_kv_blocks=32) as llm:
        return _tokens(llm)


@pytest.fixture(scope="module")
def served_model(tiny_llama_path, tmp_path_factory) -> Path:
    """The tiny model as a hub repository holds it: beside the files nbllm needs, some it must not fetch."""
    folder = tmp_path_factory.mktemp("served") / "tiny"
    shutil.copytree(tiny_llama_path, folder)
    (folder / "pytorch_model.bin").write_bytes(b"the same weights, pickled: never fetched")
    (folder / "README.md").write_text("# tiny\n")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.safetensors").write_bytes(b"an export in a subfolder: never fetched")
    return folder


def _set_offline(monkeypatch, offline: bool) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache (HF_HOME/hub) in tmp_path, offline; converted GGUFs in tmp_path too."""
    from huggingface_hub import constants

    home, cache = tmp_path / "hf_home", tmp_path / "hf_home" / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"), raising=False)
    monkeypatch.setenv("NBLLM_CACHE_DIR", str(tmp_path / "nbllm_cache"))
    _set_offline(monkeypatch, True)
    return cache


@pytest.fixture
def hub(hf_cache, monkeypatch):
    """The hub stand-in, online: HF_ENDPOINT points at it; stopped by its handle afterwards."""
    from huggingface_hub import constants

    stand_in = HubStandIn()
    monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
    monkeypatch.setattr(constants, "ENDPOINT", stand_in.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        stand_in.url + "/{repo_id}/resolve/{revision}/{filename}")
    _set_offline(monkeypatch, False)
    yield stand_in
    stand_in.stop()


def lay_out_cache(cache: Path, repo_id: str, source: Path, names: list[str], sha: str = SHA) -> Path:
    """Put `names` from `source` into `cache` the way huggingface_hub does; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = (source / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot


# ----------------------------------------------------------------------------- the local cache, offline
def test_offline_model_from_a_hand_laid_cache(hf_cache, tiny_llama_path, reference_tokens):
    snapshot = lay_out_cache(hf_cache, "org/tiny", tiny_llama_path, sorted(NEEDED))
    assert resolve_model_path("org/tiny") == snapshot
    assert resolve_model_path("org/tiny", revision=SHA) == snapshot
    with LLM(model="org/tiny", num_kv_blocks=32) as llm:
        assert llm.llm_engine.model_path == snapshot
        assert _tokens(llm) == reference_tokens


def test_offline_and_not_cached_says_so_and_how_to_fix(hf_cache):
    with pytest.raises(HubModelError, match="'org/absent'.*HF_HUB_OFFLINE.*hf download org/absent") as info:
        LLM(model="org/absent")
    assert info.value.reason == "offline" and info.value.repo_id == "org/absent"


def test_offline_gguf_file_not_cached(hf_cache):
    with pytest.raises(HubModelError, match="'tiny-Q8_0.gguf' of 'org/tiny-GGUF' is not in the Hugging Face cache"):
        resolve_model_path("org/tiny-GGUF/tiny-Q8_0.gguf")


def test_offline_with_a_cached_config_but_no_weights(hf_cache, tiny_llama_path):
    lay_out_cache(hf_cache, "org/tiny", tiny_llama_path, ["config.json", "tokenizer.json"])
    with pytest.raises(HubModelError, match="only partly in the Hugging Face cache") as info:
        resolve_model_path("org/tiny")
    assert info.value.reason == "offline"


def test_download_dir_is_the_cache_searched(hf_cache, tmp_path, tiny_llama_path):
    elsewhere = tmp_path / "models"
    snapshot = lay_out_cache(elsewhere, "org/tiny", tiny_llama_path, sorted(NEEDED))
    assert resolve_model_path("org/tiny", download_dir=str(elsewhere)) == snapshot
    with pytest.raises(HubModelError, match="offline"):
        resolve_model_path("org/tiny")  # the default cache does not hold it


# ----------------------------------------------------------------------------- downloads from the hub stand-in
def test_download_fetches_only_the_files_nbllm_reads(hub, hf_cache, served_model, capsys):
    sha = hub.add_repo("org/tiny", served_model)
    folder = resolve_model_path("org/tiny")
    assert folder == hf_cache / "models--org--tiny" / "snapshots" / sha
    assert set(hub.downloaded()) == NEEDED  # no .bin beside safetensors, no README, no subfolder
    assert {p.name for p in folder.iterdir()} == NEEDED
    assert (hf_cache / "models--org--tiny" / "refs" / "main").read_text() == sha
    assert "Fetching 6 files" in capsys.readouterr().err  # huggingface_hub's tqdm.auto bar
    requests = len(hub.requests)
    assert resolve_model_path("org/tiny") == folder
    assert len(hub.requests) == requests, "a complete cached copy is used without asking the hub"


def test_llm_by_hub_id_generates_like_the_local_folder(hub, served_model, reference_tokens):
    hub.add_repo("org/tiny", served_model)
    with LLM(model="org/tiny", num_kv_blocks=32) as llm:
        assert llm.model_name == "org/tiny"
        assert _tokens(llm) == reference_tokens


def test_pytorch_bin_weights_when_the_repository_has_no_safetensors(hub, tiny_llama_path, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_llama_path, folder)
    (folder / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_path), dtype=torch.float32)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "training_args.bin").write_bytes(b"not weights")
    hub.add_repo("org/bin-only", folder)
    snapshot = resolve_model_path("org/bin-only")
    assert (snapshot / "pytorch_model.bin").is_file()
    assert "training_args.bin" not in hub.downloaded()


def test_revision_selects_a_branch_or_commit(hub, served_model, tmp_path):
    other = tmp_path / "v1"
    shutil.copytree(served_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128}))
    hub.add_repo("org/tiny", served_model)
    sha = hub.add_repo("org/tiny", other, revision="v1")

    def positions(folder: Path) -> int:
        return json.loads((folder / "config.json").read_text())["max_position_embeddings"]

    assert positions(resolve_model_path("org/tiny")) == 256
    assert positions(resolve_model_path("org/tiny", revision="v1")) == 128
    assert resolve_model_path("org/tiny", revision=sha).name == sha


def test_download_into_download_dir(hub, served_model, tmp_path, hf_cache):
    sha = hub.add_repo("org/tiny", served_model)
    folder = resolve_model_path("org/tiny", download_dir=str(tmp_path / "models"))
    assert folder == tmp_path / "models" / "models--org--tiny" / "snapshots" / sha
    assert not (hf_cache / "models--org--tiny").exists()


@pytest.mark.parametrize("name, revision, gated_status, reason, words", [
    ("org/nope", None, None, "not_found", "'org/nope' is neither a local path nor a repository"),
    ("org/tiny", "no-such-branch", None, "revision_not_found", "revision 'no-such-branch' of 'org/tiny' does not"),
    ("org/tiny", None, 401, "gated", "'org/tiny' is a gated repository"),
    ("org/tiny", None, 403, "gated", "'org/tiny' is a gated repository.*hf auth login"),
])
def test_hub_errors_name_the_id_and_the_reason(hub, served_model, name, revision, gated_status, reason, words):
    hub.add_repo("org/tiny", served_model, gated_status=gated_status)
    with pytest.raises(HubModelError, match=words) as info:
        resolve_model_path(name, revision=revision)
    assert info.value.reason == reason and info.value.repo_id == name


def test_unreachable_hub_and_not_cached(hub):
    hub.stop()  # the endpoint now refuses connections
    with pytest.raises(HubModelError, match="'org/tiny'.*could not be reached") as info:
        resolve_model_path("org/tiny")
    assert info.value.reason == "unreachable"


def test_tokenizer_by_hub_id_fetches_tokenizer_files_only(hub, served_model, tiny_llama_path, reference_tokens):
    hub.add_repo("org/tokenizer", served_model)
    sha = hub.add_repo("org/tokenizer", served_model, revision="v2")
    folder = resolve_tokenizer_path("org/tokenizer", tiny_llama_path, revision="v2")
    assert folder.name == sha
    assert set(hub.downloaded()) == {"config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    with LLM(str(tiny_llama_path), tokenizer="org/tokenizer", tokenizer_revision="v2", num_kv_blocks=32) as llm:
        assert _tokens(llm) == reference_tokens


# ----------------------------------------------------------------------------- GGUF files on the hub
@pytest.fixture
def served_gguf(tmp_path) -> Path:
    from test_gguf_convert import tiny_weights, write_tiny_gguf

    folder = tmp_path / "tiny-GGUF"
    folder.mkdir()
    write_tiny_gguf(folder / "tiny-Q8_0.gguf", tiny_weights(tied=True))
    shutil.copy(folder / "tiny-Q8_0.gguf", folder / "tiny-F16.gguf")
    (folder / "README.md").write_text("# tiny GGUF\n")
    return folder


def test_gguf_file_named_in_a_hub_repository(hub, served_gguf):
    hub.add_repo("org/tiny-GGUF", served_gguf)
    with LLM(model="org/tiny-GGUF/tiny-Q8_0.gguf", num_kv_blocks=32) as llm:
        assert len(llm.generate("hello", GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 8
        converted = llm.llm_engine.model_path
    assert hub.downloaded() == ["tiny-Q8_0.gguf"]
    assert resolve_model_path("org/tiny-GGUF:Q8_0") == converted  # vLLM's repo:quant spelling, same file


def test_gguf_quant_that_names_no_file(hub, served_gguf):
    hub.add_repo("org/tiny-GGUF", served_gguf)
    with pytest.raises(HubModelError, match="'org/tiny-GGUF:Q4_K_M' names 0 .gguf files"):
        resolve_model_path("org/tiny-GGUF:Q4_K_M")
    with pytest.raises(HubModelError, match="'missing.gguf' is not a file of 'org/tiny-GGUF'") as info:
        resolve_model_path("org/tiny-GGUF/missing.gguf")
    assert info.value.reason == "file_not_found"


def test_local_gguf_with_a_hub_tokenizer(hub, served_gguf, tmp_path):
    from nbllm.gguf_convert import convert_gguf_to_hf_folder

    gguf_tokenizer = convert_gguf_to_hf_folder(served_gguf / "tiny-Q8_0.gguf", tmp_path / "as-hf")
    (gguf_tokenizer / "model.safetensors").unlink()  # a tokenizer repository: no weights
    hub.add_repo("org/tiny-tokenizer", gguf_tokenizer)
    with LLM(str(served_gguf / "tiny-Q8_0.gguf"), tokenizer="org/tiny-tokenizer", num_kv_blocks=32) as llm:
        assert len(llm.generate("hello", GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 8
    assert "tokenizer.json" in hub.downloaded()


# ----------------------------------------------------------------------------- names: paths stay paths
@pytest.mark.parametrize("name, is_id", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", True), ("gpt2", True), ("org/name.v2_x", True),
    ("/models/tiny", False), ("./tiny", False), ("../org/tiny", False), ("a/b/c", False), ("org/-bad", False),
    ("org--x/name", False), ("~/models", False), ("", False),
])
def test_what_counts_as_a_hub_id(name, is_id):
    assert is_repo_id(name) is is_id


def test_a_missing_local_path_is_not_sent_to_the_hub(hub):
    for name in ("/no/such/model", "./no-such-model", "no/such/model"):
        with pytest.raises(FileNotFoundError, match="not found"):
            resolve_model_path(name)
    assert hub.requests == []
