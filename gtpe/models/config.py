"""Configuration dataclasses of :class:`gtpe.models.GPSModel` (they mirror the YAML 1:1).

Example (``model:`` section of an experiment YAML)::

    channels: 64
    num_layers: 4
    local: gine          # gine | dirgine | gatedgcn | gcn | none  (gcn ignores edge features)
    attn: full           # full | linear | exphormer | grit | gt | graphormer | sgformer
                         # | polynormer | none (sgformer, polynormer: linear-time global
                         # attention of SGFormer / Polynormer; also the archs' own attention)
    heads: 4
    dropout: 0.0
    attn_dropout: 0.0
    norm: batch          # batch | layer | none
    pool: mean           # mean | add | token (graph token: attn graphormer, or arch tokengt)
    arch: gps            # gps (GPSModel) | tokengt (TokenGTModel: nodes and edges as tokens)
                         # | sgformer | polynormer | largegt (node-level models) | pyg-gps
                         # (GPSModel on PyG's GPSConv, for learning-parity comparisons)
    arch_options: {}     # options of a non-gps arch, checked by its class (``check_config``)
    residual: true       # x + branch in every layer (false: a plain stack, as Kipf's GCN)
    ffn: true            # the layers' feed-forward block (false: ReLU only; the last layer
                         # then has no ReLU and no dropout: a plain stack's output layer)
    head: mlp            # mlp (Linear-ReLU-Linear) | linear (one Linear) | pyg (Linear
                         # C-C/2-C/4-out with ReLUs: PyG's examples/graph_gps.py)
    input_dropout: 0.0   # dropout on the raw float node features, before the input encoder
    fold_linear: false   # local gcn plain stack: the first / last GCN have no weight of their
                         # own, the input encoder / linear head is it (Kipf's parametrisation)
    pe:
      rwse: {walk_length: 20, dim: 16}
      lap: {k: 8, dim: 16, normalization: sym, encoder: deepset}   # encoder: deepset | transformer | signnet
      maglap: {k: 8, q: [0.0, 0.1, 0.25], dim: 16, phase: invariant}   # q: a number or a list
      spd: {max_dist: 5, edge_encoding: 0}  # Graphormer's distances (attn: graphormer);
                            # edge_encoding: first N edges of each shortest path (0: off)
      orf: {dim: 16}        # TokenGT's orthonormal random node identifiers (arch: tokengt)

:meth:`GPSModelConfig.from_dict` builds a config from such a mapping (unknown keys are
errors); :meth:`GPSModelConfig.to_dict` is the inverse.  Values are validated on construction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "ExpanderConfig",
    "GPSModelConfig",
    "LapPEConfig",
    "MagLapPEConfig",
    "PEConfig",
    "RRWPConfig",
    "RWSEConfig",
    "ORFConfig",
    "SPDConfig",
]

LOCALS = ("gine", "dirgine", "gatedgcn", "gcn", None)
PHASES = ("canonical", "invariant")
ATTNS = ("full", "linear", "exphormer", "grit", "gt", "graphormer", "sgformer", "polynormer", None)
NORMS = ("batch", "layer", None)
POOLS = ("mean", "add", "token")
ARCHS = ("gps", "tokengt", "sgformer", "polynormer", "largegt", "pyg-gps")
HEADS = ("mlp", "linear", "pyg")


# Metadata of fields added after configs were first saved: ``to_dict`` leaves them out while
# they hold their default, so a config written by an older gtpe keeps its identity (its
# experiment hash, the resume check and the precompute cache key do not change).
OMIT_IF_DEFAULT = {"omit_if_default": True}


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def plain_dict(obj: Any) -> Any:
    """``dataclasses.asdict`` without the :data:`OMIT_IF_DEFAULT` fields that hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: plain_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get("omit_if_default") and getattr(obj, f.name) == _default(f))
        }
    if isinstance(obj, list):
        return [plain_dict(v) for v in obj]
    return obj


class ConfigError(ValueError):
    """An invalid model configuration value or key."""


T = TypeVar("T")


def _none(v: Any) -> Any:
    return None if isinstance(v, str) and v.strip().lower() in ("none", "null", "") else v


def _pos_int(owner: str, name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{owner}.{name} must be a positive integer, got {v!r}")


def _from_dict(cls: type[T], d: Any, where: str) -> T:
    if isinstance(d, cls):
        return d
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__} ({d!r})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    return cls(**dict(d))


@dataclass
class RWSEConfig:
    """Random-walk structural encoding: ``AddRWSE(walk_length, undirected)`` + ``RWSEEncoder(walk_length, dim)``."""

    walk_length: int = 20
    dim: int = 16
    # walk on the symmetrised graph (AddRWSE(undirected=True))
    undirected: bool = field(default=False, metadata=OMIT_IF_DEFAULT)

    def __post_init__(self) -> None:
        _pos_int("RWSEConfig", "walk_length", self.walk_length)
        _pos_int("RWSEConfig", "dim", self.dim)
        if self.undirected is not True and self.undirected is not False:
            raise ConfigError(f"RWSEConfig.undirected must be true or false, got {self.undirected!r}")


@dataclass
class LapPEConfig:
    """Laplacian PE: ``AddLapPE(k, normalization)`` + ``LapPEEncoder(k, dim, encoder)``;
    ``encoder`` is ``'deepset'``, ``'transformer'`` or ``'signnet'`` (SignNet, Lim et al. 2023:
    :class:`~gtpe.nn.encoders.SignNetEncoder`, a GIN over the graph, sign invariant)."""

    k: int = 8
    dim: int = 16
    normalization: str | None = "sym"
    encoder: str = "deepset"

    def __post_init__(self) -> None:
        _pos_int("LapPEConfig", "k", self.k)
        _pos_int("LapPEConfig", "dim", self.dim)
        self.normalization = _none(self.normalization)
        if self.normalization not in ("sym", None):
            raise ConfigError(
                f"LapPEConfig.normalization must be 'sym' or None, got {self.normalization!r}"
            )
        if self.encoder not in ("deepset", "transformer", "signnet"):
            raise ConfigError(
                f"LapPEConfig.encoder must be 'deepset', 'transformer' or 'signnet', "
                f"got {self.encoder!r}"
            )


def _non_negative_number(v: Any) -> bool:
    return (
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
    )


@dataclass
class MagLapPEConfig:
    """Magnetic Laplacian PE: ``AddMagLapPE(k, q)`` + ``MagLapPEEncoder(k, dim, num_q, phase)``.

    ``q`` is one number or a non-empty list of distinct numbers (multi-q, Huang et al. 2025: ``k``
    eigenvectors per ``q``, concatenated in the order given); ``phase`` is ``'canonical'`` (the
    transform's phase convention, sign flips in training) or ``'invariant'`` (features exactly
    invariant to each eigenvector's phase; see :class:`~gtpe.nn.encoders.MagLapPEEncoder`)."""

    k: int = 8
    q: float | list[float] = 0.25
    dim: int = 16
    phase: str = field(default="canonical", metadata=OMIT_IF_DEFAULT)

    def __post_init__(self) -> None:
        _pos_int("MagLapPEConfig", "k", self.k)
        _pos_int("MagLapPEConfig", "dim", self.dim)
        if isinstance(self.q, (list, tuple)):
            if not self.q or not all(_non_negative_number(v) for v in self.q):
                raise ConfigError(
                    f"MagLapPEConfig.q must be a non-negative number or a non-empty list of "
                    f"them, got {list(self.q)!r}"
                )
            if len({float(v) for v in self.q}) != len(self.q):
                raise ConfigError(
                    f"MagLapPEConfig.q must not repeat a value (the same block twice), "
                    f"got {list(self.q)!r}"
                )
            self.q = list(self.q)
        elif not _non_negative_number(self.q):
            raise ConfigError(
                f"MagLapPEConfig.q must be a non-negative number or a non-empty list of them, "
                f"got {self.q!r}"
            )
        if self.phase not in PHASES:
            raise ConfigError(f"MagLapPEConfig.phase must be one of {PHASES}, got {self.phase!r}")

    @property
    def num_q(self) -> int:
        """Number of ``q`` values (1 for a single number)."""
        return len(self.q) if isinstance(self.q, list) else 1


@dataclass
class RRWPConfig:
    """GRIT's RRWP: ``AddRRWP(walk_length)`` + ``RRWPEncoder(walk_length, channels)`` (added)."""

    walk_length: int = 21

    def __post_init__(self) -> None:
        _pos_int("RRWPConfig", "walk_length", self.walk_length)


@dataclass
class ExpanderConfig:
    """Exphormer's expander overlay: ``AddExpanderEdges(degree)`` (used with ``attn='exphormer'``
    only; ignored otherwise)."""

    degree: int = 3

    def __post_init__(self) -> None:
        _pos_int("ExpanderConfig", "degree", self.degree)


@dataclass
class SPDConfig:
    """Graphormer's shortest-path distances: ``AddSPD(max_dist, path_len=edge_encoding)`` (used
    with ``attn='graphormer'`` only, ignored otherwise): one learned bias per head and distance
    ``0..max_dist``, farther pairs share one.  ``edge_encoding`` > 0 adds Graphormer's edge
    encoding (Eq. 7) along the first ``edge_encoding`` edges of one shortest path per pair
    (Graphormer's ``multi_hop_max_dist``); 0 (default) leaves it out."""

    max_dist: int = 5
    edge_encoding: int = field(default=0, metadata=OMIT_IF_DEFAULT)

    def __post_init__(self) -> None:
        _pos_int("SPDConfig", "max_dist", self.max_dist)
        v = self.edge_encoding
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(
                f"SPDConfig.edge_encoding must be an integer >= 0 (0: off), got {v!r}"
            )


@dataclass
class ORFConfig:
    """TokenGT's orthonormal random features as node identifiers (Kim et al., NeurIPS 2022):
    ``dim`` columns of a random orthogonal matrix per graph, drawn in the model (used with
    ``arch='tokengt'`` only)."""

    dim: int = 16

    def __post_init__(self) -> None:
        _pos_int("ORFConfig", "dim", self.dim)


_PE_TYPES = {
    "rwse": RWSEConfig,
    "lap": LapPEConfig,
    "maglap": MagLapPEConfig,
    "rrwp": RRWPConfig,
    "expander": ExpanderConfig,
    "spd": SPDConfig,
    "orf": ORFConfig,
}


@dataclass
class PEConfig:
    """Which positional/structural encodings to compute and encode (each optional)."""

    rwse: RWSEConfig | None = None
    lap: LapPEConfig | None = None
    maglap: MagLapPEConfig | None = None
    rrwp: RRWPConfig | None = None
    expander: ExpanderConfig | None = None
    spd: SPDConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)
    orf: ORFConfig | None = field(default=None, metadata=OMIT_IF_DEFAULT)

    def __post_init__(self) -> None:
        for name, cls in _PE_TYPES.items():
            v = _none(getattr(self, name))
            if v is True:  # `rwse: true` in YAML = defaults
                v = cls()
            if v is not None and not isinstance(v, cls):
                v = _from_dict(cls, v, f"PEConfig.{name}")
            setattr(self, name, v)

    @property
    def concat_dim(self) -> int:
        """Total size of the PEs concatenated to the node embedding (RWSE, LapPE, MagLapPE) by
        ``GPSModel`` (TokenGT reads ``pe.lap``'s eigenvectors, not its ``dim``)."""
        return sum(c.dim for c in (self.rwse, self.lap, self.maglap) if c is not None)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PEConfig:
        if d is None:
            return cls()
        return _from_dict(cls, d, "PEConfig")


@dataclass
class GPSModelConfig:
    """Architecture of :class:`gtpe.models.GPSModel` (see the module docstring)."""

    channels: int = 64
    num_layers: int = 4
    local: str | None = "gine"
    attn: str | None = "full"
    heads: int = 4
    dropout: float = 0.0
    attn_dropout: float = 0.0
    norm: str | None = "batch"
    pool: str = "mean"
    pe: PEConfig = field(default_factory=PEConfig)
    arch: str = field(default="gps", metadata=OMIT_IF_DEFAULT)
    # plain message-passing stacks (Kipf & Welling's GCN as `local: gcn, attn: null, norm: null,
    # residual: false, ffn: false, head: linear, input_dropout: 0.5`); see the module docstring
    residual: bool = field(default=True, metadata=OMIT_IF_DEFAULT)
    ffn: bool = field(default=True, metadata=OMIT_IF_DEFAULT)
    head: str = field(default="mlp", metadata=OMIT_IF_DEFAULT)
    input_dropout: float = field(default=0.0, metadata=OMIT_IF_DEFAULT)
    fold_linear: bool = field(default=False, metadata=OMIT_IF_DEFAULT)
    # options that only one arch reads (validated by that model class's ``check_config``)
    arch_options: dict = field(default_factory=dict, metadata=OMIT_IF_DEFAULT)

    def __post_init__(self) -> None:
        _pos_int("GPSModelConfig", "channels", self.channels)
        _pos_int("GPSModelConfig", "num_layers", self.num_layers)
        _pos_int("GPSModelConfig", "heads", self.heads)
        self.local, self.attn, self.norm = _none(self.local), _none(self.attn), _none(self.norm)
        if self.local not in LOCALS:
            raise ConfigError(f"GPSModelConfig.local must be one of {LOCALS}, got {self.local!r}")
        if self.attn not in ATTNS:
            raise ConfigError(f"GPSModelConfig.attn must be one of {ATTNS}, got {self.attn!r}")
        if self.local is None and self.attn is None:
            raise ConfigError("GPSModelConfig: local and attn cannot both be None")
        if self.norm not in NORMS:
            raise ConfigError(f"GPSModelConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"GPSModelConfig.pool must be one of {POOLS}, got {self.pool!r}")
        if self.arch not in ARCHS:
            raise ConfigError(f"GPSModelConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.pool == "token" and self.attn != "graphormer" and self.arch != "tokengt":
            raise ConfigError(
                f"GPSModelConfig.pool='token' (a graph token) needs attn='graphormer' or "
                f"arch='tokengt', got attn={self.attn!r}"
            )
        for name in ("residual", "ffn", "fold_linear"):
            v = getattr(self, name)
            if v is not True and v is not False:
                raise ConfigError(f"GPSModelConfig.{name} must be true or false, got {v!r}")
        if self.head not in HEADS:
            raise ConfigError(f"GPSModelConfig.head must be one of {HEADS}, got {self.head!r}")
        if self.head == "pyg" and self.channels < 4:
            raise ConfigError(
                f"GPSModelConfig.head='pyg' narrows channels to C/2 and C/4: needs channels >= 4, "
                f"got {self.channels}"
            )
        if self.fold_linear:
            need = {"local": "gcn", "ffn": False, "head": "linear"}
            bad = [k for k, v in need.items() if getattr(self, k) != v]
            if bad:
                want = ", ".join(f"{k}: {'null' if v is None else str(v).lower()}"
                                 for k, v in need.items())
                raise ConfigError(
                    f"GPSModelConfig.fold_linear needs a plain GCN stack ({want}); got "
                    f"{bad[0]}={getattr(self, bad[0])!r}"
                )
        for name in ("dropout", "attn_dropout", "input_dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"GPSModelConfig.{name} must be in [0, 1), got {v!r}")
        if self.arch == "gps" and self.attn in ("sgformer", "polynormer") and self.attn_dropout:
            raise ConfigError(
                f"GPSModelConfig: attn={self.attn!r} is a linear attention without attention "
                f"weights to drop; set attn_dropout: 0.0, got {self.attn_dropout!r}"
            )
        if self.attn is not None and self.channels % self.heads != 0:
            raise ConfigError(
                f"GPSModelConfig: channels ({self.channels}) must be divisible by "
                f"heads ({self.heads})"
            )
        if not isinstance(self.pe, PEConfig):
            self.pe = PEConfig.from_dict(_none(self.pe))
        if not isinstance(self.arch_options, Mapping):
            raise ConfigError(
                f"GPSModelConfig.arch_options must be a mapping, got {self.arch_options!r}"
            )
        self.arch_options = dict(self.arch_options)
        if self.arch in ("gps", "tokengt") and self.arch_options:
            raise ConfigError(
                f"GPSModelConfig: arch={self.arch!r} reads no arch_options, got "
                f"{sorted(self.arch_options)}"
            )
        if self.arch == "tokengt":
            self._check_tokengt()
        elif self.arch not in ("gps", "tokengt"):
            from gtpe.models import model_class  # the arch's class checks its own options

            model_class(self).check_config(self)
        elif self.pe.orf is not None:
            raise ConfigError("GPSModelConfig: pe.orf (TokenGT's node identifiers) needs arch='tokengt'")
        if self.arch == "gps" and self.pe.concat_dim >= self.channels:
            raise ConfigError(
                f"GPSModelConfig: the concatenated PE dims (rwse + lap + maglap = "
                f"{self.pe.concat_dim}) must be smaller than channels ({self.channels}): the node "
                f"embedding gets channels - pe dims features"
            )

    def _check_tokengt(self) -> None:
        """TokenGT: a plain pre-LN Transformer over node and edge tokens (no message passing,
        LayerNorm), full or linear attention, node identifiers from ``pe.lap`` (its raw
        eigenvectors) or ``pe.orf``, exactly one of them."""
        if self.local is not None:
            raise ConfigError(
                f"GPSModelConfig: arch='tokengt' has no message passing; set local: null, got "
                f"local={self.local!r}"
            )
        if self.attn not in ("full", "linear"):
            raise ConfigError(
                f"GPSModelConfig: arch='tokengt' needs attn 'full' or 'linear', got {self.attn!r}"
            )
        if self.norm != "layer":
            raise ConfigError(
                f"GPSModelConfig: arch='tokengt' is a pre-LN Transformer; set norm: layer, got "
                f"norm={self.norm!r}"
            )
        if (self.pe.lap is None) == (self.pe.orf is None):
            raise ConfigError(
                "GPSModelConfig: arch='tokengt' needs node identifiers: exactly one of pe.lap "
                "(Laplacian eigenvectors, gtpe.transforms.AddLapPE) or pe.orf (orthonormal "
                "random features)"
            )
        plain = [n for n in ("residual", "ffn", "head", "input_dropout", "fold_linear")
                 if getattr(self, n) != GPSModelConfig.__dataclass_fields__[n].default]
        if plain:
            raise ConfigError(
                f"GPSModelConfig: arch='tokengt' does not read {plain[0]} (a GPSModel option); "
                f"leave it at its default"
            )
        other = [n for n in ("rwse", "maglap", "rrwp", "expander", "spd") if getattr(self.pe, n)]
        if other:
            raise ConfigError(
                f"GPSModelConfig: arch='tokengt' reads only pe.lap or pe.orf, got pe.{other[0]}"
            )

    # -- transforms --------------------------------------------------------------------------
    def transforms(self) -> list[Any]:
        """The :mod:`gtpe.transforms` instances whose outputs the model reads, in a fixed order:
        RWSE, LapPE, MagLapPE, RRWP (also for ``attn='grit'`` without ``pe.rrwp``), expander
        edges (for ``attn='exphormer'``, with ``pe.expander`` or the default degree),
        shortest-path distances (for ``attn='graphormer'``, with ``pe.spd`` or the default
        ``max_dist``)."""
        from gtpe import transforms as T

        pe = self.pe
        out: list[Any] = []
        if pe.rwse is not None:
            out.append(T.AddRWSE(walk_length=pe.rwse.walk_length, undirected=pe.rwse.undirected))
        if pe.lap is not None:
            out.append(T.AddLapPE(k=pe.lap.k, normalization=pe.lap.normalization))
        if pe.maglap is not None:
            out.append(T.AddMagLapPE(k=pe.maglap.k, q=pe.maglap.q))
        rrwp = self.rrwp_config
        if rrwp is not None:
            out.append(T.AddRRWP(walk_length=rrwp.walk_length))
        exp = self.expander_config
        if exp is not None:
            out.append(T.AddExpanderEdges(degree=exp.degree))
        spd = self.spd_config
        if spd is not None:
            kw = {"path_len": spd.edge_encoding} if spd.edge_encoding else {}
            out.append(T.AddSPD(max_dist=spd.max_dist, **kw))
        return out

    @property
    def rrwp_config(self) -> RRWPConfig | None:
        """The RRWP the model uses: ``pe.rrwp``, or the default for ``attn='grit'``."""
        if self.pe.rrwp is not None:
            return self.pe.rrwp
        return RRWPConfig() if self.attn == "grit" else None

    @property
    def spd_config(self) -> SPDConfig | None:
        """The shortest-path distances the model uses (only with ``attn='graphormer'``):
        ``pe.spd``, or the default."""
        if self.attn != "graphormer":
            return None
        return self.pe.spd if self.pe.spd is not None else SPDConfig()

    @property
    def expander_config(self) -> ExpanderConfig | None:
        """The expander overlay the model uses (only with ``attn='exphormer'``)."""
        if self.attn != "exphormer":
            return None
        return self.pe.expander if self.pe.expander is not None else ExpanderConfig()

    # -- dict round trip -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPSModelConfig:
        """Build from a YAML-like mapping; unknown keys (at any level) raise :class:`ConfigError`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"GPSModelConfig: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        if "pe" in d:
            d["pe"] = PEConfig.from_dict(_none(d["pe"]))
        return _from_dict(cls, d, "GPSModelConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (``from_dict(to_dict())`` round-trips; fields marked
        :data:`OMIT_IF_DEFAULT` are left out at their default)."""
        return plain_dict(self)
