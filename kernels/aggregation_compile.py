"""Compile every variant of the Triton aggregation kernels for a GPU target, without a GPU.

The interpreter is more lenient than the compiler, so the tests also compile each variant to PTX
and cubin. Run it without TRITON_INTERPRET (kernels decorated for the interpreter cannot compile):

    python -m fedbrb_fast.kernels.aggregation_compile --arch 90 [--shard i/n]
"""

from __future__ import annotations

import argparse
import re

from fedbrb_fast.optional import require

SCATTER_SIGNATURE = {
    "a_ptr": "*{acc}", "c_ptr": "*{acc}", "data_ptr": "*{data}", "mask_ptr": "*fp32",
    "weights_ptr": "*{acc}", "rows_ptr": "*i64", "cols_ptr": "*i64", "k_rows": "i32", "k_width": "i32", "inner": "i32",
    "width": "i32", "rows_client_stride": "i32", "cols_client_stride": "i32", "c_row_stride": "i32",
    "c_per_col": "i32", "c_rows_reduced": "i32", "HAS_MASK": "constexpr",
    "BLOCK_ROWS": "constexpr", "BLOCK_WIDTH": "constexpr",
}
APPLY_SIGNATURE = {
    "out_ptr": "*{out}", "p_ptr": "*{out}", "a_ptr": "*{acc}", "c_ptr": "*{acc}", "s_ptr": "*{acc}", "w_ptr": "*{acc}",
    "numel": "i64", "width": "i32", "c_many_rows": "i32", "c_width": "i32", "c_per_col": "i32", "s_rows": "i32",
    "s_width": "i32", "w_rows": "i32", "w_width": "i32", "keep": "fp32", "lam": "fp32", "tiny": "fp32",
    "BROADCAST": "constexpr", "BLOCK": "constexpr",
}


def variants() -> list[tuple[str, dict[str, str], dict[str, object]]]:
    """(name, signature, constexprs) of every launch the wrappers in aggregation_triton can make
    (block sizes at their maxima; the data dtypes the backends pass; float32 or float64 sums)."""
    from .aggregation_triton import APPLY_BLOCK, MAX_BLOCK_ROWS, MAX_BLOCK_WIDTH

    out: list[tuple[str, dict[str, str], dict[str, object]]] = []
    for data, acc in (("fp32", "fp32"), ("fp16", "fp32"), ("fp32", "fp64")):
        for mask in (False, True):
            signature = {k: v.format(acc=acc, data=data) for k, v in SCATTER_SIGNATURE.items()}
            out.append((f"scatter_add[{data}->{acc}{'+mask' if mask else ''}]", signature,
                        {"HAS_MASK": mask, "BLOCK_ROWS": MAX_BLOCK_ROWS, "BLOCK_WIDTH": MAX_BLOCK_WIDTH}))
    for p, acc in (("fp32", "fp32"), ("fp16", "fp32"), ("fp32", "fp64")):
        for broadcast in (False, True):
            signature = {k: v.format(acc=acc, out=p) for k, v in APPLY_SIGNATURE.items()}
            out.append((f"apply[{p}<-{acc}{'+broadcast' if broadcast else ''}]", signature,
                        {"BROADCAST": broadcast, "BLOCK": APPLY_BLOCK}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--shard", default="0/1", help="i/n: compile every n-th variant from the i-th")
    args = parser.parse_args()
    index, count = map(int, args.shard.split("/"))

    require("triton", "compiling the triton aggregation kernels")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import aggregation_triton

    kernels = {"scatter_add": aggregation_triton.scatter_add_kernel, "apply": aggregation_triton.apply_kernel}
    for name, signature, constexprs in variants()[index::count]:
        compiled = triton.compile(ASTSource(kernels[name.split("[")[0]], signature, constexprs),
                                  target=GPUTarget("cuda", args.arch, 32), options={"enable_fp_fusion": True})
        reductions = len(re.findall(r"\b(?:red|atom)\.global\.gpu\.relaxed\.add", compiled.asm["ptx"]))
        print(f"compiled {name} ptx={len(compiled.asm['ptx'])} cubin={len(compiled.asm['cubin'])} "
              f"atomic_adds={reductions}")


if __name__ == "__main__":
    main()
