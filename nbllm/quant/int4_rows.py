"""nbllm::int4_rows, nbllm's int4 product on torch's packed CPU weights (int4_rows.cpp), built once per machine.

torch's CPU int4 kernel is compute-bound at one row: on the default model the 30 layers' four products
took 4.08 ms a token with their 63 MiB of weights (15.6 GB/s, against about 22 GB/s streaming), and it
rounds each group's scale and zero point to bfloat16. int4_rows reads the same packed 4-bit values with
the checkpoint's exact scales (float32, from nbllm.quant.int4pack.exact_scales) and AVX-512 BF16 dot
products: 2.91 against 3.78 ms for those products, and no slower than torch's kernel up to 2048 rows
(prefills; measured with bfloat16 scales). Its output is float32, the product of the exact weights with bfloat16 activations,
and a row's result does not depend on the other rows of the product, so results do not change with the
batch.

The same library holds nbllm::int8_rows, for weights of up to 8 bits (the default model's Q8_0 lm_head)
in its own layout (nbllm.quant.int4pack.int8_layout): torch's kernel can only take those as two 4-bit
planes, twice the dot products.

It needs a CPU with avx512_bf16 and a C++ compiler, and is compiled with g++ against this torch on first
use into ``<nbllm cache>/extensions`` (one build per machine, torch version and source, about 20 s),
then loaded from there. `rows_kernel_available()` says whether this process can use it: the CPU has the
instructions, the build succeeded, and a self-check against the exact product passed. Where it cannot,
products stay on torch's kernel (with a warning when a build was tried and failed);
``NBLLM_INT4_ROWS=0`` keeps them there.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from nbllm import native

ENV_SWITCH = "NBLLM_INT4_ROWS"  # "0" keeps every product on torch's kernel
_SOURCE = Path(__file__).with_name("int4_rows.cpp")


def _library_path() -> Path:
    return native.library_path(_SOURCE)


def _op_loaded() -> bool:
    """Whether this process already has nbllm::int8_rows, and so this source's int4_rows (from any nbllm cache
    folder)."""
    return native.op_loaded("int8_rows")


def _register_fake() -> None:
    def rows_product(x: torch.Tensor, weight: torch.Tensor, scales_offsets: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)

    for name in ("nbllm::int4_rows", "nbllm::int8_rows"):
        torch.library.register_fake(name)(rows_product)


def _self_check() -> Optional[str]:
    """None when int4_rows computes a random 4-bit and 8-bit weight's exact product to float32 accuracy,
    else what differed."""
    from nbllm.quant.groups import GroupQuant
    from nbllm.quant.int4pack import exact_scales, int8_layout, pack, rows_matmul

    generator = torch.Generator().manual_seed(0)
    for bits in (4, 8):
        weight = GroupQuant.from_float(torch.randn(192, 256, generator=generator), bits)
        packed = pack(weight)[0] if bits == 4 else int8_layout(weight, 192)
        scales = exact_scales(weight, 192)
        for rows in (1, 2, 3, 4, 7, 130):  # both paths, and rows split across threads
            x = torch.randn(rows, 256, generator=generator)
            expected = x.to(torch.bfloat16).double() @ weight.dequantize().double().T
            got = rows_matmul(x, packed, scales, bits).double()
            error = (got - expected).abs().max().item() / expected.abs().max().item()
            if error > 1e-5:
                return f"{bits}-bit weight, {rows} rows: relative error {error:.3g}"
    return None


@lru_cache(maxsize=1)
def rows_kernel_available() -> bool:
    """Whether nbllm::int4_rows is loaded and checked in this process (builds it on first use per machine)."""
    return native.kernel_usable(ENV_SWITCH, _library_path(), _SOURCE, _op_loaded, _register_fake, _self_check,
                                "the int4 row kernel is not used, torch's int4 kernel serves every product")
