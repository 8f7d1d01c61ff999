"""df.llm / s.llm and generate_dataframe: templates, dedup, missing values, errors, returned frames."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from nb_fakes import assert_engine_idle

from nbllm import SamplingParams
from nbllm.notebook import generate_dataframe  # importing nbllm.notebook registers the accessors

GREEDY = SamplingParams(temperature=0, max_tokens=5)


def greedy(llm, prompt: str) -> str:
    return llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].text


@pytest.fixture
def frame():
    return pd.DataFrame({"city": ["Paris", "Rome", "Paris", None, "Oslo", "Rome"],
                         "n": [1, 2, 1, 3, 4, 2]}, index=[10, 11, 12, 13, 14, 15])


def test_template_per_row_with_dedup_and_missing_values(frame, spy, tiny_llm, capsys):
    before = frame.copy()
    result = frame.llm.generate("Tell me {n} facts about {city}.", out="facts", sampling_params=GREEDY, llm=spy)
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is not mutated
    assert list(result.columns) == ["city", "n", "facts"] and list(result.index) == list(frame.index)
    prompts = [e[1] for e in spy.submitted]
    assert prompts == ["Tell me 1 facts about Paris.", "Tell me 2 facts about Rome.", "Tell me 4 facts about Oslo."]
    assert result.loc[10, "facts"] == result.loc[12, "facts"] == greedy(tiny_llm, prompts[0])
    assert result.loc[14, "facts"] == greedy(tiny_llm, prompts[2])
    assert pd.isna(result.loc[13, "facts"])
    assert "5/5" in capsys.readouterr().err, "the progress bar counts rows (duplicates included)"
    assert_engine_idle(tiny_llm)


def test_bad_placeholders_raise_key_error_listing_columns(frame, spy):
    with pytest.raises(KeyError, match=r"\{country\} names no column; columns are \['city', 'n'\]"):
        frame.llm.generate("About {country}", llm=spy)
    with pytest.raises(KeyError, match=r"\{\}"):
        frame.llm.generate("About {}", llm=spy)
    with pytest.raises(ValueError, match="literal braces"):
        frame.llm.generate("About {city", llm=spy)
    assert spy.submitted == []


def test_n_completions_chat_and_system(frame, spy):
    result = frame.head(2).llm.generate("Hi {city}", out="replies", n=2, chat=True, system="Be brief.",
                                        sampling_params=SamplingParams(max_tokens=3), llm=spy, use_tqdm=False)
    assert all(isinstance(r, list) and len(r) == 2 for r in result["replies"])
    assert spy.rendered == [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {city}"}]
                            for city in ("Paris", "Rome")]  # one submit_chat per row
    assert [params.n for _, _, params in spy.submitted] == [2, 2]


def test_series_accessor(spy, tiny_llm):
    series = pd.Series(["red", None, "blue", "red"], name="colour", index=list("abcd"))
    result = series.llm.generate("The colour {} is", sampling_params=GREEDY, llm=spy, use_tqdm=False)
    assert list(result.index) == list("abcd") and result.name == "colour"
    assert [e[1] for e in spy.submitted] == ["The colour red is", "The colour blue is"]
    assert result["a"] == result["d"] == greedy(tiny_llm, "The colour red is") and pd.isna(result["b"])
    with pytest.raises(KeyError, match="with \\{\\}"):
        series.llm.generate("The colour {name}", llm=spy)
    with pytest.raises(ValueError, match="needs a"):
        series.llm.generate("No placeholder", llm=spy)


def test_generate_dataframe_rows(tiny_llm):
    params = SamplingParams(max_tokens=4, n=2, ignore_eos=True, logprobs=0)  # cumulative_logprob needs logprobs
    table = generate_dataframe(tiny_llm, ["Hello", "Once upon a time"], params, use_tqdm=False)
    assert list(table.columns) == ["prompt", "text", "finish_reason", "prompt_tokens", "completion_tokens",
                                   "cumulative_logprob", "latency_s", "error"]
    assert table["error"].isna().all()
    assert list(table["prompt"]) == ["Hello", "Hello", "Once upon a time", "Once upon a time"]
    assert (table["completion_tokens"] == 4).all() and (table["finish_reason"] == "length").all()
    tokenizer = tiny_llm.get_tokenizer()
    assert table["prompt_tokens"].tolist()[::2] == [len(tokenizer.encode(p)) for p in ["Hello", "Once upon a time"]]
    assert (table["latency_s"] > 0).all() and all(v <= 0 and not math.isnan(v) for v in table["cumulative_logprob"])


def test_a_hundred_rows_run_as_one_batch(tiny_llm):
    frame = pd.DataFrame({"i": range(100)})
    start = tiny_llm.get_stats().requests_finished_total
    result = frame.llm.generate("Number {i}", sampling_params=SamplingParams(max_tokens=2), llm=tiny_llm,
                                use_tqdm=False)
    assert result["completion"].notna().all()
    assert tiny_llm.get_stats().requests_finished_total - start == 100
