"""ddf.llm on a real LocalCluster (2 worker processes, 1 thread each): the pandas path's results, one engine
per worker, a worker killed mid-job, an engine that cannot load, and workers as clients of `nbllm serve`."""

import os
import signal
import socket
import subprocess
import sys
import time

import dask
import dask.dataframe as dd
import httpx
import pandas as pd
import pytest

import nbllm.dask  # noqa: F401  (registers the Dask accessors)
from nbllm import SamplingParams
from nbllm.dask import EngineLoadError, loaded_engines
from nbllm.dask.engines import EngineSpec, worker_engines

TINY = {"num_kv_blocks": 256, "block_size": 8}  # the shared tiny_llm's arguments: the same greedy text
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
TEMPLATE = "Tell me about {city}."


@pytest.fixture
def frame() -> pd.DataFrame:
    """32 rows: duplicates within and across partitions, and missing values."""
    cities = ["Paris", "Rome", None, "Paris", "Oslo", "Lima", "Rome", "Kyiv"] * 3 + ["Quito"] * 4 + [None] * 4
    return pd.DataFrame({"city": cities, "n": range(32)})


def assert_same_column(got: pd.Series, expected: pd.Series) -> None:
    """Same index in the same order, the same text, missing exactly where the pandas path has missing."""
    assert list(got.index) == list(expected.index)
    assert got.isna().tolist() == expected.isna().tolist()
    assert got.dropna().tolist() == expected.dropna().tolist()


def finished_requests(spec: EngineSpec, dask_worker) -> int:
    return worker_engines(dask_worker).get(spec, dask_worker.address).get_stats().requests_finished_total


def generating(dask_worker) -> bool:
    """A task is running on this worker and its engine is loaded: it is generating."""
    return bool(dask_worker.state.executing) and bool(loaded_engines(dask_worker))


def test_same_rows_and_text_as_the_pandas_path(client, frame, tiny_llama_path, tiny_llm):
    ddf = dd.from_pandas(frame, npartitions=4)
    result, stats = ddf.llm.generate(TEMPLATE, out="facts", sampling_params=GREEDY, engine=str(tiny_llama_path),
                                     engine_kwargs=TINY, stats=True)
    got, stats = dask.compute(result, stats)
    expected = frame.llm.generate(TEMPLATE, out="facts", sampling_params=GREEDY, llm=tiny_llm, use_tqdm=False)
    assert_same_column(got["facts"], expected["facts"])
    assert got["n"].tolist() == list(range(32))

    tokenizer = tiny_llm.get_tokenizer()
    assert sorted(stats["partition"]) == [0, 1, 2, 3] and stats["rows"].sum() == 32
    for _, row in stats.iterrows():  # dedup within each partition, as the pandas path does
        prompts = {TEMPLATE.format(city=c) for c in frame["city"][8 * row.partition:8 * row.partition + 8].dropna()}
        assert row.requests == len(prompts) and row.completion_tokens == 6 * len(prompts)
        assert row.prompt_tokens == sum(len(tokenizer.encode(p)) for p in prompts)
        assert row.latency_s > 0 and row.load_s >= 0
    spec = EngineSpec.of(str(tiny_llama_path), TINY)
    assert all(specs == [repr(spec)] for specs in client.run(loaded_engines).values()), "one engine per worker"
    served = client.run(finished_requests, spec)
    assert len(served) == 2 and sum(served.values()) == stats["requests"].sum(), "each worker's one engine served"


def test_series_and_n_completions(client, frame, tiny_llama_path, tiny_llm):
    ddf = dd.from_pandas(frame, npartitions=4)
    got = ddf["city"].llm.generate("City: {}", sampling_params=GREEDY, engine=str(tiny_llama_path),
                                   engine_kwargs=TINY).compute()
    expected = frame["city"].llm.generate("City: {}", sampling_params=GREEDY, llm=tiny_llm, use_tqdm=False)
    assert got.name == "city"
    assert_same_column(got, expected)
    replies = ddf.head(4, npartitions=1, compute=False).llm.generate(
        TEMPLATE, n=2, sampling_params=GREEDY, engine=str(tiny_llama_path), engine_kwargs=TINY).compute()
    assert replies["completion"].dtype == object
    assert [len(r) if isinstance(r, list) else None for r in replies["completion"]] == [2, 2, None, 2]


def test_choice_and_extract_as_the_pandas_path(client, frame, tiny_llama_path, tiny_llm):
    ddf = dd.from_pandas(frame, npartitions=4)
    on_workers = {"engine": str(tiny_llama_path), "engine_kwargs": TINY}
    params = SamplingParams(temperature=0, max_tokens=8)
    labelled = ddf.llm.generate(TEMPLATE, out="label", choice=["yes", "no"], sampling_params=params,
                                **on_workers).compute()
    expected = frame.llm.generate(TEMPLATE, out="label", choice=["yes", "no"], sampling_params=params, llm=tiny_llm,
                                  use_tqdm=False)
    assert labelled["label"].dtype == expected["label"].dtype
    assert_same_column(labelled["label"], expected["label"])

    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "mood": {"enum": ["up", "down"]}}, "required": ["age", "mood"]}
    params = SamplingParams(temperature=0, max_tokens=40)
    extracted = ddf.llm.extract(TEMPLATE, schema, sampling_params=params, **on_workers).compute()
    expected = frame.llm.extract(TEMPLATE, schema, sampling_params=params, llm=tiny_llm, use_tqdm=False)
    for name in ("age", "mood"):
        assert extracted[name].dtype == expected[name].dtype
        assert_same_column(extracted[name], expected[name])
    assert extracted["age"].notna().sum() == frame["city"].notna().sum(), "every prompt gave valid JSON"


def test_an_engine_that_cannot_load_is_a_clear_error(client, frame, tmp_path):
    ddf = dd.from_pandas(frame, npartitions=2)
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(EngineLoadError, match=r"could not build LLM\('.*no-such-model'\) on Dask worker tcp://"):
        ddf.llm.generate(TEMPLATE, engine=missing).compute()


def test_a_worker_killed_mid_job_loses_and_duplicates_no_row(client, tiny_llama_path):
    frame = pd.DataFrame({"i": range(64)})
    ddf = dd.from_pandas(frame, npartitions=4)
    params = SamplingParams(temperature=0, max_tokens=96, ignore_eos=True)  # about a second per partition
    result, stats = ddf.llm.generate("Number {i}:", sampling_params=params, engine=str(tiny_llama_path),
                                     engine_kwargs=TINY, stats=True)
    unfaulted = result.compute()
    pids = client.run(os.getpid)
    futures = client.compute([result, stats])
    victim = None
    while victim is None:
        assert not all(f.done() for f in futures), "the job ended before a worker was seen generating"
        busy = [address for address, yes in client.run(generating).items() if yes]
        victim = busy[0] if busy else None
        time.sleep(0.05)
    os.kill(pids[victim], signal.SIGKILL)
    got, stats = client.gather(futures)
    assert sorted(stats["partition"]) == [0, 1, 2, 3], "each partition counted once"
    assert_same_column(got["completion"], unfaulted["completion"])  # the first test compares with pandas
    assert pids[victim] not in client.run(os.getpid).values(), "the killed worker was replaced"


@pytest.fixture
def nbllm_serve(tiny_llama_path, tmp_path):
    """`nbllm serve` on the tiny model, as its own process on 127.0.0.1; stopped by its PID."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "nbllm.server.cli", "serve", str(tiny_llama_path), "--port", str(port),
               "--block-size", "8", "--num-kv-blocks", "256", "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nbllm serve did not come up"
            time.sleep(0.3)
        yield url
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_workers_as_clients_of_nbllm_serve(client, frame, nbllm_serve, tiny_llm):
    ddf = dd.from_pandas(frame, npartitions=4)
    result, stats = ddf.llm.generate(TEMPLATE, out="facts", sampling_params=GREEDY, engine=f"{nbllm_serve}/v1",
                                     stats=True)
    got, stats = dask.compute(result, stats)
    expected = frame.llm.generate(TEMPLATE, out="facts", sampling_params=GREEDY, llm=tiny_llm, use_tqdm=False)
    assert_same_column(got["facts"], expected["facts"])
    assert (stats["completion_tokens"] == 6 * stats["requests"]).all() and stats["requests"].sum() > 0
    remote = repr(EngineSpec.of(f"{nbllm_serve}/v1"))
    assert any(remote in specs for specs in client.run(loaded_engines).values())
