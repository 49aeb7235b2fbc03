"""FedBRB's shear coefficients (c_g, e_g) from the layout's group adjacency (docs/algorithm.md#adjacency, #shear).

Block start of group g at roll counter u: b_g(u) = (u + c_g*floor(u/K) + e_g*floor(u/K^2)) mod K. For two
groups that slice one tensor, (b_g, b_g') runs through every pair of blocks equally often over any K^3
consecutive counters exactly when gcd(c_g - c_g', e_g - e_g', K) = 1 (K^2 counters when e_g = e_g' = 0).
"""

from __future__ import annotations

from ..models.layout import ModelLayout

Shear = tuple[int, int]  # (c_g, e_g)

# Any two distinct colours differ by a vector of -1/0/1 entries, so gcd(dc, de, K) = 1 for every K.
COLOURS: tuple[Shear, ...] = ((0, 0), (1, 0), (0, 1), (1, 1))


def group_adjacency(layout: ModelLayout) -> set[tuple[int, int]]:
    """Pairs (g, g') with g < g' of different groups that slice one tensor, one on each axis."""
    return set(layout.adjacency)


def diagonal_only_tensors(layout: ModelLayout) -> dict[str, int]:
    """Tensors sliced on both axes by the same group, with that group: a client holds one index set
    per group, so a width-beta_min client trains only the diagonal tiles of such a tensor."""
    out = {}
    for spec in layout.params:
        axes = spec.sliced_axes
        if len(axes) == 2 and axes[0][1] == axes[1][1]:
            out[spec.name] = axes[0][1]
    return out


def is_chain(adjacency: set[tuple[int, int]]) -> bool:
    """A chain: only consecutive groups are adjacent (adjacency within {(g, g+1)}); a layout with no
    adjacent groups at all is a chain too."""
    return all(b == a + 1 for a, b in adjacency)


def chain_shear(num_groups: int) -> tuple[Shear, ...]:
    """c_g = g, e_g = 0: consecutive groups differ by c = 1, so K^2 counters cover every tile."""
    return tuple((g, 0) for g in range(num_groups))


def shear_coefficients(layout: ModelLayout) -> tuple[Shear, ...]:
    """Per group (c_g, e_g): the chain coefficients for chains, otherwise a greedy proper colouring of the
    adjacency graph in network order (group 0 first) with COLOURS. Raises ValueError naming the group
    that finds all four colours taken by its neighbours."""
    adjacency = group_adjacency(layout)
    num_groups = len(layout.group_sizes)
    if is_chain(adjacency):
        return chain_shear(num_groups)
    neighbours: dict[int, set[int]] = {g: set() for g in range(num_groups)}
    for a, b in adjacency:
        neighbours[a].add(b)
        neighbours[b].add(a)
    colour: dict[int, Shear] = {}
    for g in range(num_groups):
        taken = {colour[h] for h in neighbours[g] if h in colour}
        free = [c for c in COLOURS if c not in taken]
        if not free:
            coloured = sorted(h for h in neighbours[g] if h in colour)
            raise ValueError(
                f"FedBRB cannot roll this layout: channel group {g} is adjacent to groups {coloured}, which take all "
                f"{len(COLOURS)} shear colours {list(COLOURS)} (greedy colouring in network order); "
                "a layout must be coloured with 4 colours")
        colour[g] = free[0]
    return tuple(colour[g] for g in range(num_groups))
