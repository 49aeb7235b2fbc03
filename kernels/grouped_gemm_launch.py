"""Launch descriptions of the grouped block-sliced GEMM kernels.

Each builder returns a `KernelLaunch` (kernel, grid, arguments, compile-time constants) without
running it, so the same description is launched in training and compiled for an sm_90 target in
the tests (grouped_gemm_compile.py): the compile check covers exactly the argument lists the
launchers use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from fedbrb_fast.optional import require
from fedbrb_fast.profiling import nvtx_range

from .grouped_gemm_kernels import (
    grouped_linear_forward_kernel,
    grouped_linear_grad_input_kernel,
    grouped_linear_grad_weight_kernel,
)
from .grouped_gemm_problems import GroupedProblems

require("triton", "the Triton grouped GEMM")
import triton  # noqa: E402

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32"}


@dataclass(frozen=True)
class TileConfig:
    """Block sizes along M (client rows), N (out features), K (in features), shared by the three
    kernels, and the launch options. The compiled tl.dot needs every block >= 16."""

    block_m: int = 32
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {value}")


def default_tiles(problems: GroupedProblems) -> TileConfig:
    """Blocks no larger than the biggest problem needs (clients have 10-32 rows per batch, so
    BLOCK_M stays small); a starting point until the benchmark tunes them on a GPU."""
    def fit(size: int, cap: int = 64) -> int:
        return min(max(16, triton.next_power_of_2(size)), cap)

    m, n, k = problems.max_sizes
    return TileConfig(block_m=fit(m), block_n=fit(n), block_k=fit(k))


class GridKernel(Protocol):
    """A @triton.jit function: indexed by its launch grid, then called with the arguments."""

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., object]: ...


@dataclass(frozen=True)
class KernelLaunch:
    name: str
    kernel: GridKernel
    num_tiles: int
    args: dict
    constexprs: dict
    tiles: TileConfig

    def run(self) -> None:
        if self.num_tiles == 0:
            return
        with nvtx_range(f"grouped_gemm.{self.name}"):
            self.kernel[(self.num_tiles,)](**self.args, **self.constexprs, num_warps=self.tiles.num_warps,
                                           num_stages=self.tiles.num_stages)

    def signature(self) -> dict[str, str]:
        """The argument types as triton.compile's ASTSource wants them."""
        types = {name: _argument_type(value) for name, value in self.args.items()}
        return types | {name: "constexpr" for name in self.constexprs}


def _argument_type(value: object) -> str:
    if isinstance(value, Tensor):
        return "*" + _TRITON_TYPES[value.dtype]
    if isinstance(value, int):
        return "i32" if -(2 ** 31) <= value < 2 ** 31 else "i64"
    raise TypeError(f"unexpected kernel argument {value!r}")


def _dot_mode(dtype: torch.dtype, allow_tf32: bool) -> dict:
    if dtype == torch.bfloat16:
        return {"UPCAST": True, "PRECISION": "tf32"}  # bf16 values are exact in tf32
    return {"UPCAST": False, "PRECISION": "tf32" if allow_tf32 else "ieee"}


def forward_launch(x: Tensor, w_src: Tensor, b_src: Tensor | None, y: Tensor, problems: GroupedProblems,
                   tiles: TileConfig, allow_tf32: bool) -> KernelLaunch:
    """Y = X Wᵀ + b for every problem; `w_src` [S, R, C], `b_src` [S, R] or None."""
    tile_map = problems.tile_map("forward", tiles.block_m, tiles.block_n, x.device)
    bias = b_src if b_src is not None else w_src  # never read without HAS_BIAS
    args = dict(
        x_ptr=x, w_ptr=w_src, b_ptr=bias, y_ptr=y, problems_ptr=problems.device_table(x.device), tile_map_ptr=tile_map,
        stride_xm=x.stride(0), stride_xk=x.stride(1),
        stride_ws=w_src.stride(0), stride_wr=w_src.stride(1), stride_wc=w_src.stride(2),
        stride_bs=bias.stride(0), stride_br=bias.stride(1),
        stride_ym=y.stride(0), stride_yn=y.stride(1),
        R=w_src.shape[1], C=w_src.shape[2],
    )
    constexprs = dict(HAS_BIAS=b_src is not None, **_dot_mode(x.dtype, allow_tf32),
                      BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k)
    return KernelLaunch("forward", grouped_linear_forward_kernel, tile_map.shape[0], args, constexprs, tiles)


def grad_input_launch(dy: Tensor, w_src: Tensor, dx: Tensor, problems: GroupedProblems, tiles: TileConfig,
                      allow_tf32: bool) -> KernelLaunch:
    """dX = dY W for every problem."""
    tile_map = problems.tile_map("grad_input", tiles.block_m, tiles.block_k, dy.device)
    args = dict(
        dy_ptr=dy, w_ptr=w_src, dx_ptr=dx, problems_ptr=problems.device_table(dy.device), tile_map_ptr=tile_map,
        stride_dym=dy.stride(0), stride_dyn=dy.stride(1),
        stride_ws=w_src.stride(0), stride_wr=w_src.stride(1), stride_wc=w_src.stride(2),
        stride_dxm=dx.stride(0), stride_dxk=dx.stride(1),
        R=w_src.shape[1], C=w_src.shape[2],
    )
    constexprs = dict(**_dot_mode(dy.dtype, allow_tf32), BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
                      BLOCK_K=tiles.block_k)
    return KernelLaunch("grad_input", grouped_linear_grad_input_kernel, tile_map.shape[0], args, constexprs, tiles)


def grad_weight_launch(dy: Tensor, x: Tensor, dw: Tensor, db: Tensor | None, problems: GroupedProblems,
                       tiles: TileConfig, allow_tf32: bool) -> KernelLaunch:
    """dW (and db when `db` is given) into zero-filled fp32 buffers shaped like the sources."""
    tile_map = problems.tile_map("grad_weight", tiles.block_n, tiles.block_k, dy.device)
    bias = db if db is not None else dw[:, :, 0]  # never written without HAS_BIAS
    args = dict(
        dy_ptr=dy, x_ptr=x, dw_ptr=dw, db_ptr=bias, problems_ptr=problems.device_table(dy.device),
        tile_map_ptr=tile_map,
        stride_dym=dy.stride(0), stride_dyn=dy.stride(1), stride_xm=x.stride(0), stride_xk=x.stride(1),
        stride_dws=dw.stride(0), stride_dwr=dw.stride(1), stride_dwc=dw.stride(2),
        stride_dbs=bias.stride(0), stride_dbr=bias.stride(1),
        R=dw.shape[1], C=dw.shape[2],
    )
    constexprs = dict(HAS_BIAS=db is not None, ATOMIC=problems.shares_sources, **_dot_mode(dy.dtype, allow_tf32),
                      BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k)
    return KernelLaunch("grad_weight", grouped_linear_grad_weight_kernel, tile_map.shape[0], args, constexprs, tiles)
