"""Many requests at once over any EngineClient: submit all, then wait for them together.

`submit_all` starts every request before any is read (so the engine batches them)
with one shared queue for their outputs; `collect` waits for each request's final
output, in input order, with a progress bar of rows done and tokens/s; `drain` yields
outputs as they come. Leaving either early (an exception, an interrupt, closing the
iterator) aborts what is unfinished, which frees its KV blocks. LLM, RemoteLLM and
the DataFrame tools all use these, so the poll loop and the bar exist once.
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from nbllm.inputs import ParamsType, PromptsType, as_list, params_per_prompt
from nbllm.outputs import RequestOutput
from nbllm.sampling_params import RequestOutputKind
from nbllm.streams import RequestStream, wait_for

if TYPE_CHECKING:
    from nbllm.protocol import EngineClient

Submit = Callable[[int, Callable[[Any], None]], RequestStream]


class Batch:
    """The streams of one batch and the queue their outputs arrive on, as (index, item)."""

    def __init__(self, client: "EngineClient") -> None:
        self.client = client
        self.outputs: "queue.SimpleQueue[tuple[int, Any]]" = queue.SimpleQueue()
        self.streams: list[RequestStream] = []

    def deliver_to(self, index: int) -> Callable[[Any], None]:
        return lambda item: self.outputs.put((index, item))

    def abort(self, indices: Sequence[int]) -> None:
        request_ids = [self.streams[i].request_id for i in indices]
        if request_ids:
            self.client.abort(request_ids)


def submit_all(client: "EngineClient", count: int, submit: Submit) -> Batch:
    """`submit(index, deliver)` for each index; on an error the requests already started are aborted."""
    batch = Batch(client)
    try:
        for index in range(count):
            batch.streams.append(submit(index, batch.deliver_to(index)))
    except BaseException:
        batch.abort(range(len(batch.streams)))
        raise
    return batch


def collect(batch: Batch, use_tqdm: bool = True, rows_per_item: Optional[Sequence[int]] = None,
            desc: str = "Processed prompts", unit: str = "req") -> list[Any]:
    """Each request's final output, in submission order."""
    count = len(batch.streams)
    weights = list(rows_per_item) if rows_per_item is not None else [1] * count
    results: list[Any] = [None] * count
    bar = progress_bar(sum(weights), desc, unit) if use_tqdm else None
    start, generated, remaining = time.monotonic(), 0, count
    try:
        while remaining:
            index, item = wait_for(batch.outputs)
            if isinstance(item, BaseException):
                raise item
            if not item.finished:
                continue
            results[index] = item
            remaining -= 1
            generated += sum(len(o.token_ids) for o in getattr(item, "outputs", ()))
            if bar is not None:
                bar.update(weights[index])
                bar.set_postfix_str(f"{generated / max(time.monotonic() - start, 1e-9):.1f} tok/s", refresh=False)
    except BaseException:
        batch.abort([i for i, result in enumerate(results) if result is None])
        raise
    finally:
        if bar is not None:
            bar.close()
    return results


def drain(batch: Batch) -> Iterator[tuple[int, Any]]:
    """(index, output) as outputs arrive, until every request has finished."""
    unfinished = set(range(len(batch.streams)))
    try:
        while unfinished:
            index, item = wait_for(batch.outputs)
            if isinstance(item, BaseException):
                raise item
            if item.finished:
                unfinished.discard(index)
            yield index, item
    finally:
        batch.abort(sorted(unfinished))


def generate(client: "EngineClient", prompts: PromptsType, sampling_params: ParamsType,
             use_tqdm: bool = True, submit_kwargs: Optional[Sequence[dict]] = None) -> list[RequestOutput]:
    """Final outputs of all prompts in input order, through `client.submit` (EngineClient.generate).

    `submit_kwargs[i]` adds keyword arguments to prompt i's submit (e.g. LLM's priority).
    """
    items = as_list(prompts)
    params = params_per_prompt(sampling_params, len(items), client.get_default_sampling_params)
    extra = list(submit_kwargs) if submit_kwargs is not None else [{}] * len(items)
    final = RequestOutputKind.FINAL_ONLY
    batch = submit_all(client, len(items), lambda i, deliver: client.submit(
        items[i], params[i] if params[i].output_kind == final else params[i].updated(output_kind=final),
        deliver=deliver, **extra[i]))
    return collect(batch, use_tqdm)


def stream(client: "EngineClient", prompts: PromptsType, sampling_params: ParamsType) -> Iterator[RequestOutput]:
    """Outputs of all prompts as they come (EngineClient.stream); bad input raises before the first next()."""
    items = as_list(prompts)
    params = params_per_prompt(sampling_params, len(items), client.get_default_sampling_params)
    batch = submit_all(client, len(items), lambda i, deliver: client.submit(items[i], params[i], deliver=deliver))
    return outputs_of(drain(batch))


def outputs_of(pairs: Iterator[tuple[int, Any]]) -> Iterator[Any]:
    """The outputs of `drain`, without their indices; closing this closes the drain (aborting the rest)."""
    try:
        for _, output in pairs:
            yield output
    finally:
        pairs.close()  # type: ignore[attr-defined]  # a generator: closing it aborts the unfinished


def progress_bar(total: int, desc: str, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
