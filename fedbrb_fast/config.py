"""The experiment config: typed, validated, read from TOML with `key=value` overrides.

Every check that can fail runs here, before any data is loaded or any model is built, and each
error names the field (dotted path) and the reason.
"""

from __future__ import annotations

import tomllib
from abc import abstractmethod
from fractions import Fraction
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import tomli_w
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from .methods import Method, uneven_groups

IMAGE_DATASETS = ("mnist5k", "digits", "mnist", "cifar10", "cifar100")
VECTOR_DATASETS = ("mnist1d", "synthetic")
TOKEN_DATASETS = ("shakespeare",)  # int64 character ids, next-character targets (fedbrb_fast.data.datasets)
LOCAL_FILE_DATASETS = ("mnist", "cifar10", "cifar100")
NATURAL_CLIENT_DATASETS = ("synthetic", "shakespeare")  # datasets that define their own clients
# Token data has no one label per sample to split by: its own clients (natural) or an i.i.d. split
# of the pooled sequences.
TOKEN_PARTITIONS = ("natural", "iid")


class ConfigError(ValueError):
    """An invalid configuration; the message lists `field: reason` lines."""


def _parse_width(value: Any) -> Any:
    """Accept widths as numbers or exact fractions written as strings ("1/8")."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{value!r} is not a number or fraction like '1/8'") from exc
    return value


Width = Annotated[float, BeforeValidator(_parse_width), Field(gt=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class DataConfig(_Section):
    dataset: Literal["mnist5k", "digits", "mnist1d", "synthetic", "mnist", "cifar10", "cifar100",
                     "shakespeare"] = "mnist5k"
    root: str | None = Field(None, description="folder with MNIST IDX / CIFAR binary files")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    partition: Literal["iid", "dirichlet", "shards", "natural"] = "shards"
    dirichlet_alpha: float = Field(0.3, gt=0)
    shards_per_client: int = Field(2, ge=1)
    synthetic_alpha: float = Field(1.0, ge=0)
    synthetic_beta: float = Field(1.0, ge=0)
    synthetic_max_samples: int | None = Field(1000, ge=50)
    seq_len: int = Field(80, ge=1, description="token datasets: characters per input (LEAF: 80); a sample is "
                         "seq_len + 1 characters of one role")
    min_sequences: int = Field(2, ge=2, description="token datasets: samples a role needs to be a client "
                               "(2: one train and one test sample)")
    max_test_sequences: int = Field(2000, ge=0, description="token datasets: cap on the pooled test samples (a "
                                    "seeded subset; evaluating a Transformer on the CPU is costly); 0: no cap")


class FamilyConfig(_Section):
    """The [model] section of one model family, selected by `arch` (the key of the family's
    entry in `models.registry`); each family subclasses this with its own fields."""

    arch: str
    needs_images: ClassVar[bool] = False  # inputs must be (channels, height, width)
    needs_tokens: ClassVar[bool] = False  # inputs are int64 token ids [seq_len] (TOKEN_DATASETS), not floats

    @property
    @abstractmethod
    def group_sizes(self) -> list[int]:
        """Sizes N_g of the global model's channel groups, in network order."""

    @abstractmethod
    def narrowed(self, num_blocks: int) -> Self:
        """The same family with every group num_blocks times narrower (fedavg_small's global model)."""

    def size_problems(self) -> list[str]:
        """Problems of the fields that set the group sizes, before any size is read."""
        return []

    def block_problems(self, num_blocks: int) -> list[str]:
        """Groups that do not split into `num_blocks` equal blocks, named by the field that sets them."""
        sizes = self.group_sizes
        return [f"model: channel group {g} of size {sizes[g]} is not divisible by K = {num_blocks} blocks"
                for g in uneven_groups(sizes, num_blocks)]


class NormedConfig(FamilyConfig):
    """A family with the norm options of docs/algorithm.md#local-training and HeteroFL's scaler."""

    norm: Literal["none", "bn", "gn"] = "none"
    norm_groups: int = Field(4, ge=1)
    scaler: bool = True


class ChainConfig(NormedConfig):
    """A chain of hidden layers (one channel group each), optional norm and scaler."""

    default_hidden: ClassVar[tuple[int, ...]]
    hidden: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1)
    scale: float = Field(1.0, gt=0)

    @property
    def base_hidden(self) -> list[int]:
        return list(self.hidden if self.hidden is not None else self.default_hidden)

    @property
    def hidden_sizes(self) -> list[int]:
        """Hidden sizes of the global model (hidden x scale; integrality checked at load)."""
        return [round(h * self.scale) for h in self.base_hidden]

    @property
    def group_sizes(self) -> list[int]:
        return self.hidden_sizes

    def narrowed(self, num_blocks: int) -> Self:
        return self.model_copy(update={"hidden": [n // num_blocks for n in self.hidden_sizes], "scale": 1.0})

    def size_problems(self) -> list[str]:
        bad = [h for h in self.base_hidden
               if abs(h * self.scale - round(h * self.scale)) > 1e-9 or round(h * self.scale) < 1]
        return [f"model.scale: {self.scale} times hidden sizes {bad} is not a positive integer"] if bad else []

    def block_problems(self, num_blocks: int) -> list[str]:
        sizes = self.group_sizes
        return [f"model.hidden: hidden size {sizes[g]} (group {g}) is not divisible by K = {num_blocks} blocks"
                for g in uneven_groups(sizes, num_blocks)]


class MLPConfig(ChainConfig):
    arch: Literal["mlp"] = "mlp"
    default_hidden = (256, 256)
    # None, not False, when off: a config that leaves it unset serializes as before the option existed, so
    # earlier run folders still count as runs of the same config
    classifier_scaler: bool | None = Field(
        None, description="true: while a client trains, divide the classifier's input by its width ratio too, so "
        "a sub-model's logits have the scale of the global model's (docs/algorithm.md#classifier-scaler); unset or "
        "false: off (the SPEC)")


class CNNConfig(ChainConfig):
    """The HeteroFL CNN: conv3x3 blocks, a pool between blocks, then a linear classifier."""

    arch: Literal["cnn"] = "cnn"
    default_hidden = (64, 128, 256, 512)
    needs_images = True


PRERESNET_STAGES = 4
PRERESNET_GROUPS_PER_STAGE = 3  # the stage's residual stream and its two blocks' inner groups


class PreResNetConfig(NormedConfig):
    """PreResNet-18 (docs/algorithm.md#model-families): four stages of two pre-activation basic
    blocks, stage widths `widths`, static BatchNorm by default as HeteroFL and FedRolex train it."""

    arch: Literal["preresnet18"] = "preresnet18"
    needs_images = True
    widths: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 128, 256, 512],
                                                      min_length=PRERESNET_STAGES, max_length=PRERESNET_STAGES)
    norm: Literal["none", "bn", "gn"] = "bn"

    @property
    def group_sizes(self) -> list[int]:
        """Every group has its stage's width (models/preresnet.py numbers them stage by stage)."""
        return [w for w in self.widths for _ in range(PRERESNET_GROUPS_PER_STAGE)]

    def narrowed(self, num_blocks: int) -> Self:
        return self.model_copy(update={"widths": [w // num_blocks for w in self.widths]})

    def block_problems(self, num_blocks: int) -> list[str]:
        return [f"model.widths: stage {s} width {w} is not divisible by K = {num_blocks} blocks"
                for s, w in enumerate(self.widths) if w % num_blocks]


class TransformerConfig(FamilyConfig):
    """A pre-norm causal Transformer language model (docs/algorithm.md#model-families): `layers`
    blocks of multi-head attention (`heads` heads, all kept in every sub-model, each sliced inside)
    and a GELU MLP of `mlp` hidden units, model dimension `dim`, learned positions up to `context`."""

    arch: Literal["transformer"] = "transformer"
    needs_tokens: ClassVar[bool] = True
    layers: int = Field(4, ge=1)
    dim: int = Field(256, ge=1)
    heads: int = Field(8, ge=1)
    mlp: int = Field(1024, ge=1)
    context: int = Field(80, ge=1, description="the longest sequence the model reads (its positional table)")
    scaler: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def group_sizes(self) -> list[int]:
        """The model dimension, then per layer its attention (heads x head_dim) and MLP groups."""
        return [self.dim, *(n for _ in range(self.layers) for n in (self.dim, self.mlp))]

    @property
    def group_segments(self) -> list[int]:
        """R_g: each layer's attention group holds one segment per head."""
        return [1, *(r for _ in range(self.layers) for r in (self.heads, 1))]

    def narrowed(self, num_blocks: int) -> Self:
        return self.model_copy(update={"dim": self.dim // num_blocks, "mlp": self.mlp // num_blocks})

    def size_problems(self) -> list[str]:
        if self.dim % self.heads:
            return [f"model.heads: {self.heads} heads do not divide model.dim = {self.dim}"]
        return []

    def block_problems(self, num_blocks: int) -> list[str]:
        k = num_blocks
        out = [f"model.dim: {self.dim} is not divisible by K = {k} blocks"] if self.dim % k else []
        if self.head_dim % k:
            out.append(f"model.heads: the head dimension dim / heads = {self.head_dim} is not divisible by K = {k} "
                       "blocks (every head is sliced inside)")
        if self.mlp % k:
            out.append(f"model.mlp: {self.mlp} is not divisible by K = {k} blocks")
        return out


def _arch_of(value: Any) -> str | None:
    """The family tag of a [model] section; a section without `arch` is an MLP."""
    if isinstance(value, dict):
        return str(value.get("arch", "mlp"))
    return getattr(value, "arch", None)


ModelConfig = Annotated[Annotated[MLPConfig, Tag("mlp")] | Annotated[CNNConfig, Tag("cnn")]
                        | Annotated[PreResNetConfig, Tag("preresnet18")]
                        | Annotated[TransformerConfig, Tag("transformer")], Discriminator(_arch_of)]
MODEL_CONFIGS: tuple[type[FamilyConfig], ...] = (MLPConfig, CNNConfig, PreResNetConfig,
                                                 TransformerConfig)  # the members of ModelConfig
MODEL_ARCHS = tuple(str(c.model_fields["arch"].default) for c in MODEL_CONFIGS)  # one per family in models/


class ClientsConfig(_Section):
    num_clients: int = Field(100, ge=1)
    per_round: int = Field(10, ge=1)
    widths: list[Width] = Field(default_factory=lambda: [0.125], min_length=1)
    proportions: list[Annotated[float, Field(gt=0)]] | None = None
    weighting: Literal["samples", "uniform"] = "samples"
    label_mask: bool = False


class MethodConfig(_Section):
    name: Method = "fedbrb"
    schedule: Literal["shear", "diagonal"] = "shear"
    lam: float = Field(0.5, ge=0, le=1)
    lam_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lam_end: float = Field(0.0, ge=0, le=1)
    # None (the SPEC default) leaves the field out of a saved config, so runs written before it existed still match.
    init: Literal["tiled"] | None = Field(
        None, description="fedbrb: 'tiled' starts the global model with every tile of a tensor equal to its first "
        "block's (docs/algorithm.md#tiled-init); unset: the whole global model drawn at once, every tile independent")


class TrainConfig(_Section):
    engine: Literal["reference", "batched", "distributed"] = Field(
        "batched", description="distributed: the batched engine on every rank of a torch.distributed process group")
    max_clients_per_step: int = Field(256, ge=1, description="batched engine: clients trained at once (memory bound)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="batched engine: where clients train")
    linear_backend: Literal["torch", "triton"] = Field("torch", description="batched engine: linear layers via torch "
                                                       "(fused/implicit updates) or the Triton grouped GEMM (CUDA)")
    cpu_trainer: Literal["auto", "stacked"] = Field(
        "auto", description="batched engine on the CPU: 'auto' trains ReLU chains (MLP without norm) client by client "
        "in a numba kernel when numba is installed; 'stacked': every model step by step in batched torch ops")
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(10, ge=1)
    lr: float = Field(0.05, gt=0)
    lr_schedule: Literal["constant", "multistep"] = "constant"
    lr_milestones: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    lr_gamma: float = Field(0.1, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    clip_norm: float | None = Field(None, gt=0)
    dist_timeout_s: float = Field(300.0, gt=0, description="distributed engine: seconds a rank waits for the others "
                                  "in a collective before the run fails")


class EvalConfig(_Section):
    every: int = Field(1, ge=1)
    batch_size: int = Field(1000, ge=1)


class FaultsConfig(_Section):
    dropout: float = Field(0.0, ge=0, lt=1, description="probability that a sampled client never returns")
    corrupt: float = Field(0.0, ge=0, le=1, description="probability that a returning client's update is corrupted")
    corrupt_kind: Literal["nan", "inf", "huge"] = "nan"
    max_update_norm: float | None = Field(None, gt=0, description="exclude updates whose norm exceeds this")


class AggregationConfig(_Section):
    backend: Literal["auto", "reference", "torch", "numba", "triton", "cuda", "cupy"] = Field(
        "auto", description="aggregation backend; auto = the fastest available on the device")


class CheckpointConfig(_Section):
    every: int = Field(10, ge=0, description="rounds between checkpoints (0: only on a signal and at the end)")


class ExperimentConfig(_Section):
    name: str = Field("experiment", min_length=1)
    seed: int = Field(0, ge=0)
    rounds: int = Field(20, ge=1)
    output_dir: str = "runs/experiment"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=MLPConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @property
    def beta_min(self) -> float:
        return min(self.clients.widths)

    @property
    def num_blocks(self) -> int:
        """K = 1 / beta_min (an integer after validation)."""
        return round(1 / self.beta_min)

    @model_validator(mode="after")
    def _cross_field_checks(self) -> ExperimentConfig:
        problems = _cross_field_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _cross_field_problems(cfg: ExperimentConfig) -> list[str]:
    """Relations between fields that no single field's type can express."""
    out: list[str] = []
    c, m, d = cfg.clients, cfg.model, cfg.data
    if c.per_round > c.num_clients:
        out.append(f"clients.per_round: {c.per_round} clients per round but only {c.num_clients} clients")
    if c.proportions is not None and len(c.proportions) != len(c.widths):
        out.append(f"clients.proportions: {len(c.proportions)} proportions for {len(c.widths)} widths")

    size_problems = m.size_problems()
    if size_problems:
        return out + size_problems
    sizes = m.group_sizes

    widths = [Fraction(w).limit_denominator(1 << 20) for w in c.widths]
    k_exact = 1 / min(widths)
    if k_exact.denominator != 1:
        out.append(f"clients.widths: 1 / beta_min = {float(k_exact):g} is not an integer "
                   "(K = 1/beta_min must be whole)")
        return out
    k = int(k_exact)
    for w in widths:
        if (w * k).denominator != 1:
            out.append(f"clients.widths: width {float(w):g} is not a whole number of blocks of 1/{k}")
    out += m.block_problems(k)
    if out:
        return out

    if cfg.method.name == "fedavg_small":
        client_sizes = {n // k for n in sizes}
    elif cfg.method.name == "fedavg":
        client_sizes = set(sizes)
    else:
        client_sizes = {int(w * n) for w in widths for n in sizes}
    if isinstance(m, NormedConfig) and m.norm == "gn":
        bad = sorted(s for s in client_sizes if s % m.norm_groups)
        if bad:
            out.append(f"model.norm_groups: {m.norm_groups} groups do not divide client channel counts {bad}")

    tokens = d.dataset in TOKEN_DATASETS
    if m.needs_images and d.dataset not in IMAGE_DATASETS:
        kind = "a token" if tokens else "a vector"
        out.append(f"model.arch: {m.arch!r} needs image data, {d.dataset!r} is {kind} dataset"
                   + ("" if tokens else " (use arch = 'mlp')"))
    elif m.needs_tokens and not tokens:
        out.append(f"model.arch: {m.arch!r} reads token ids, {d.dataset!r} holds float features (token datasets: "
                   f"{', '.join(TOKEN_DATASETS)})")
    elif tokens and not m.needs_tokens:
        out.append(f"model.arch: {m.arch!r} reads float features, {d.dataset!r} holds character ids: use a "
                   "model family that reads tokens")
    elif isinstance(m, TransformerConfig) and d.seq_len > m.context:
        out.append(f"data.seq_len: sequences of {d.seq_len} characters are longer than the model's context "
                   f"(model.context = {m.context})")
    if d.dataset in LOCAL_FILE_DATASETS and not d.root:
        out.append(f"data.root: dataset {d.dataset!r} is read from local files; set data.root (nothing is downloaded)")
    if d.partition == "natural" and d.dataset not in NATURAL_CLIENT_DATASETS:
        out.append(f"data.partition: 'natural' needs a dataset that defines its clients "
                   f"({', '.join(NATURAL_CLIENT_DATASETS)}), not {d.dataset!r}")
    if tokens and d.partition not in TOKEN_PARTITIONS:
        out.append(f"data.partition: {d.partition!r} splits by label; {d.dataset!r} is token data without one label "
                   f"per sample: use {' or '.join(repr(p) for p in TOKEN_PARTITIONS)}")
    if cfg.train.engine == "distributed" and cfg.aggregation.backend == "reference":
        out.append("aggregation.backend: 'reference' computes no partial sums to all-reduce; the distributed engine "
                   "needs auto, torch, numba, triton or cuda")
    if cfg.method.init is not None and cfg.method.name != "fedbrb":
        out.append(f"method.init: {cfg.method.init!r} is an option of fedbrb, not of {cfg.method.name!r}")
    ms = cfg.train.lr_milestones
    if any(b <= a for a, b in pairwise(ms)):
        out.append(f"train.lr_milestones: {ms} must be strictly increasing")
    return out


# ---------------------------------------------------------------------------------------------
# Loading, overrides and saving


def default_config_text() -> str:
    return resources.files("fedbrb_fast.configs").joinpath("default.toml").read_text()


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value); the value is read as a TOML value, else as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=0.1")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = _deep_copy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        parts = list(err["loc"])
        if parts[:1] == ["model"] and len(parts) > 1 and parts[1] in MODEL_ARCHS:
            del parts[1]  # the union's tag: the family's fields sit right under [model]
        loc = ".".join(str(p) for p in parts)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_not_found" and loc == "model":
            msg = "expected a table of the model family's fields, with its arch"
        elif err["type"] == "union_tag_invalid" and loc == "model":
            loc, msg = "model.arch", (f"unknown model family {err['ctx']['tag']!r} "
                                      f"(one of {', '.join(repr(a) for a in MODEL_ARCHS)})")
            # No family to check the section against: keys that no family has are still named.
            family_fields = {f for c in MODEL_CONFIGS for f in c.model_fields}
            lines += [f"model.{key}: unknown key" for key in err["input"] if key not in family_fields]
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a TOML config (the embedded default when `path` is None) and apply overrides."""
    if path is None:
        text, source = default_config_text(), "the embedded default config"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        text, source = p.read_text(), str(p)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return config_from_dict(apply_overrides(raw, overrides or []))


def config_to_toml(cfg: ExperimentConfig) -> str:
    """The resolved config (defaults filled in); None values are left out, as TOML has no null."""
    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
