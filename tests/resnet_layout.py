"""Layout-only PreResNet-18 (docs/algorithm.md#model-families) for the plan tests: which channel group
slices which axis of which tensor, with no forward pass.

Stem conv3x3 into stage 0's residual stream; four stages of two pre-activation basic blocks
(norm n1 on the block input, conv1 into the block's inner group, norm n2, conv2 back to the stage's
stream); a 1x1 shortcut conv from the previous stream in a stage's first block where the width or the
stride changes (stages 1-3); a final norm on the last stream and the classifier. Convolutions have no
bias (as HeteroFL's). Groups are numbered in network order: by the first tensor that writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedbrb_fast.models import ModelLayout, ParamSpec


def preresnet18_layout(in_channels: int, widths: Sequence[int], num_classes: int,
                       blocks_per_stage: int = 2) -> ModelLayout:
    sizes: list[int] = []
    specs: list[ParamSpec] = []

    def new_group(n: int) -> int:
        sizes.append(n)
        return len(sizes) - 1

    def conv(name: str, out_group: int, in_group: int | None, in_size: int, kernel: int) -> None:
        specs.append(ParamSpec(name, (sizes[out_group], in_size, kernel, kernel), (out_group, in_group, None, None)))

    def norm(name: str, group: int) -> None:
        specs.append(ParamSpec(f"{name}.weight", (sizes[group],), (group,)))
        specs.append(ParamSpec(f"{name}.bias", (sizes[group],), (group,)))

    stream = new_group(widths[0])
    conv("conv1.weight", stream, None, in_channels, 3)
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            name = f"layer{stage + 1}.{block}"
            changes = block == 0 and stage > 0  # stride 2 (and, here, a new width) from stage 1 on
            norm(f"{name}.n1", stream)
            inner = new_group(width)
            conv(f"{name}.conv1.weight", inner, stream, sizes[stream], 3)
            norm(f"{name}.n2", inner)
            out = new_group(width) if changes else stream
            conv(f"{name}.conv2.weight", out, inner, width, 3)
            if changes:
                conv(f"{name}.shortcut.weight", out, stream, sizes[stream], 1)
            stream = out
    norm("n4", stream)
    specs.append(ParamSpec("linear.weight", (num_classes, sizes[stream]), (None, stream)))
    specs.append(ParamSpec("linear.bias", (num_classes,), (None,)))
    return ModelLayout(tuple(sizes), tuple(specs))
