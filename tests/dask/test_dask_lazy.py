"""ddf.llm / ds.llm before anything runs: meta, task names, early errors; nbllm.dask imports no torch."""

import subprocess
import sys

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import nbllm.dask  # noqa: F401  (registers the Dask accessors)
from nbllm.dask import EngineSpec


@pytest.fixture
def ddf():
    frame = pd.DataFrame({"city": ["Paris", "Rome", None, "Oslo"], "n": [1, 2, 3, 4]})
    return dd.from_pandas(frame, npartitions=2)


def test_generate_is_lazy_with_the_new_column_in_meta(ddf):
    result = ddf.llm.generate("About {city}", out="facts", engine="/no/model/here")  # nothing is built yet
    assert list(result.columns) == ["city", "n", "facts"]
    assert result.dtypes["facts"] == pd.Series(["text"]).dtype  # what the pandas path gives for strings
    assert result.npartitions == 2 and result.divisions == ddf.divisions
    assert ddf.llm.generate("About {city}", n=2).dtypes["completion"] == np.dtype(object)  # a list per row
    keys = [key[0] for key in result.__dask_graph__() if isinstance(key, tuple)]
    assert sum(key.startswith("nbllm-generate-") for key in set(keys)) == 1, "one task name for the bar and dashboard"


def test_series_meta_and_stats_frame(ddf):
    series, stats = ddf["city"].llm.generate("City {}", stats=True)
    assert isinstance(series, dd.Series) and series.name == "city" and series.dtype == pd.Series(["x"]).dtype
    assert list(stats.columns) == ["partition", "worker", "rows", "requests", "prompt_tokens", "completion_tokens",
                                   "load_s", "latency_s"]


def test_choice_and_extract_meta_are_the_pandas_dtypes(ddf):
    labelled = ddf.llm.generate("About {city}", out="label", choice=["good", "bad"])
    assert isinstance(labelled.dtypes["label"], pd.CategoricalDtype)
    assert list(labelled.dtypes["label"].categories) == ["good", "bad"]
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "mood": {"enum": ["up", "down"]},
                                               "tags": {"type": "array", "items": {"type": "string"}}}}
    extracted = ddf.llm.extract("Facts about {city}", schema)
    assert list(extracted.columns) == ["city", "n", "age", "mood", "tags"]
    assert [str(extracted.dtypes[c]) for c in ("age", "mood", "tags")] == ["Int64", "category", "object"]
    from_series = ddf["city"].llm.extract("Facts about {}", schema)
    assert isinstance(from_series, dd.DataFrame) and list(from_series.columns) == ["age", "mood", "tags"]
    with pytest.raises(ValueError, match="object schema with properties"):
        ddf.llm.extract("Facts about {city}", {"type": "string"})


def test_bad_templates_and_engines_raise_before_any_task(ddf):
    with pytest.raises(KeyError, match=r"\{country\} names no column; columns are \['city', 'n'\]"):
        ddf.llm.generate("About {country}")
    with pytest.raises(ValueError, match="literal braces"):
        ddf.llm.generate("About {city")
    with pytest.raises(KeyError, match="with \\{\\}"):
        ddf["city"].llm.generate("City {name}")
    with pytest.raises(TypeError, match="cannot travel to the workers"):
        ddf.llm.generate("About {city}", engine=object())


def test_engine_spec():
    remote = EngineSpec.of("http://gpu:8000/v1", {"max_concurrency": 32})
    assert remote.is_remote and str(remote) == "RemoteLLM('http://gpu:8000/v1', max_concurrency=32)"
    local = EngineSpec.of(None, {"dtype": "float32"})
    assert not local.is_remote and str(local) == "LLM(None, dtype='float32')"
    assert EngineSpec.of("m", {"b": 1, "a": 2}) == EngineSpec.of("m", {"a": 2, "b": 1})


def test_importing_nbllm_dask_does_not_import_torch():
    code = "import sys, nbllm.dask; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
