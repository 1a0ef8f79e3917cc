r""":class:`PyGGPSModel`: :class:`~gtpe.models.GPSModel` with its layers replaced by PyG's
:class:`torch_geometric.nn.GPSConv` (``arch='pyg-gps'``), for learning-parity comparisons of
the two implementations with everything else (encoders, pooling, head, training) equal."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor
from torch.nn import Linear, ModuleList, ReLU, Sequential

from gtpe.models.config import ConfigError, GPSModelConfig
from gtpe.models.gps_model import GPSModel
from gtpe.nn.ops import scatter_mean, scatter_sum

__all__ = ["PYG_ATTN_TYPES", "PYG_NORMS", "PyGGPSModel"]

# gtpe attention name -> GPSConv attn_type
PYG_ATTN_TYPES = {"full": "multihead", "linear": "performer"}
# gtpe norm name -> (GPSConv norm, norm_kwargs); PyG's LayerNorm in 'node' mode is
# torch.nn.LayerNorm over the features (its default 'graph' mode normalises over each graph)
PYG_NORMS: dict[str | None, tuple[str | None, dict[str, Any] | None]] = {
    "batch": ("batch_norm", None),
    "layer": ("layer_norm", {"mode": "node"}),
    None: (None, None),
}
# PyG's example (examples/graph_gps.py) redraws Performer's random features every 1000 training
# steps; GPSConv itself never does
PERFORMER_REDRAW_INTERVAL = 1000


class PyGGPSModel(GPSModel):
    r"""The GPS model of :class:`~gtpe.models.GPSModel` (same encoders, pooling and head) on
    PyG's :class:`torch_geometric.nn.GPSConv` layers:

    .. math::
        \mathbf{x}^{(\ell+1)} = \mathrm{GPSConv}_\ell\big(\mathbf{x}^{(\ell)}, \mathbf{e}\big),
        \qquad \mathrm{GPSConv} = \text{local } \mathrm{GINEConv} \parallel
        \text{global attention, then } \mathrm{MLP}

    (Rampášek et al., 2022, `"Recipe for a General, Powerful, Scalable Graph Transformer"
    <https://arxiv.org/abs/2205.12454>`_).  Layer ``ℓ`` is ``GPSConv(C, GINEConv(Linear(C, C) -
    ReLU - Linear(C, C)), heads, dropout, attn_type, attn_kwargs={'dropout': attn_dropout},
    norm)`` with

    * ``attn='full'`` → ``attn_type='multihead'`` (:class:`torch.nn.MultiheadAttention`): the
      same parameters as :class:`~gtpe.nn.GPSLayer` (``local`` ↔ ``conv``, ``normK`` ↔
      ``normK.module``), so with the weights of a :class:`GPSModel` of the same config
      (:meth:`from_gps`, :meth:`to_gps`) the outputs are equal;
    * ``attn='linear'`` → ``attn_type='performer'`` (PyG's
      :class:`~torch_geometric.nn.attention.PerformerAttention`, built with ``head_channels =
      C / heads`` and ``qkv_bias=True`` so that it has the parameter shapes of
      :class:`~gtpe.nn.attention.LinearAttention`); PyG's is another approximation (ReLU kernel
      features instead of positive softmax-kernel features), so the outputs differ.  Its random
      features are redrawn every 1000 training forwards, as PyG's ``examples/graph_gps.py``;
    * ``norm='batch'`` → ``'batch_norm'``, ``'layer'`` → ``'layer_norm'`` in ``mode='node'``
      (:class:`torch.nn.LayerNorm` over the features, as GPSLayer's), ``None`` → ``None``.

    Built after the same random draws as :class:`GPSModel` (its layers' initial weights are
    copied into the ``GPSConv`` layers), so at one ``torch.manual_seed`` both implementations
    start from the same weights (:meth:`reset_parameters` then re-initialises the layers with
    ``GPSConv.reset_parameters``).  Without edge features (``edge_input=None``)
    ``GINEConv`` gets zero edge features, whose
    messages :math:`\mathrm{ReLU}(\mathbf{x}_j)` are :class:`~gtpe.nn.local.GINE`'s without
    edge features.  What ``GPSConv`` cannot express is a :class:`ConfigError`
    (:meth:`check_config`).  Constructor arguments and ``forward(data)`` as
    :class:`GPSModel`.
    """

    def __init__(
        self,
        config: GPSModelConfig,
        *,
        out_dim: int,
        node_input: str,
        node_in_dim: int,
        edge_input: str | None,
        edge_in_dim: int = 0,
        graph_level: bool = True,
        directed: bool = False,
    ):
        if not isinstance(config, GPSModelConfig):
            raise TypeError(
                f"PyGGPSModel: config must be a GPSModelConfig, got {type(config).__name__} "
                f"(use GPSModelConfig.from_dict)"
            )
        self.check_config(config)
        # GPSModel builds the encoders, pooling and head (and GPSLayers, replaced below)
        super().__init__(
            dataclasses.replace(config, arch="gps"),
            out_dim=out_dim,
            node_input=node_input,
            node_in_dim=node_in_dim,
            edge_input=edge_input,
            edge_in_dim=edge_in_dim,
            graph_level=graph_level,
            directed=directed,
        )
        self.config = config
        # the GPSLayers' initial weights go to the GPSConvs: at one torch seed both models
        # start from the same weights (Performer's random features aside)
        gps_state = self.state_dict()
        self.layers = ModuleList([self._conv() for _ in range(config.num_layers)])
        self.register_buffer("num_train_forwards", torch.zeros((), dtype=torch.long))
        self.load_state_dict(self._pyg_state(gps_state))

    @staticmethod
    def check_config(config: GPSModelConfig) -> None:
        """Raise :class:`ConfigError` for what ``GPSConv`` cannot express: ``arch`` other than
        ``'pyg-gps'``, ``local`` other than ``'gine'``, ``attn`` other than ``'full'`` /
        ``'linear'``, ``residual=False``, ``ffn=False``, the encodings of other attentions
        (``pe.spd``, ``pe.expander``, ``pe.orf``), PE dims not below ``channels``, and any
        ``arch_options`` (it reads none)."""
        if config.arch != "pyg-gps":
            raise ConfigError(f"PyGGPSModel: needs arch='pyg-gps', got {config.arch!r}")
        if config.arch_options:
            raise ConfigError(
                f"PyGGPSModel: arch='pyg-gps' reads no arch_options, got "
                f"{sorted(config.arch_options)}"
            )
        if config.local != "gine":
            raise ConfigError(
                f"PyGGPSModel: GPSConv is built with GINEConv; needs local='gine', got "
                f"local={config.local!r}"
            )
        if config.attn not in PYG_ATTN_TYPES:
            raise ConfigError(
                f"PyGGPSModel: GPSConv has attn_type 'multihead' (attn='full') or 'performer' "
                f"(attn='linear'); got attn={config.attn!r}"
            )
        for name in ("residual", "ffn"):
            if getattr(config, name) is not True:
                raise ConfigError(
                    f"PyGGPSModel: GPSConv always has the residuals and the feed-forward block; "
                    f"{name}=False needs arch='gps'"
                )
        for name in ("spd", "expander", "orf"):
            if getattr(config.pe, name) is not None:
                raise ConfigError(
                    f"PyGGPSModel: pe.{name} is read by another attention or arch, not by "
                    f"GPSConv; remove it"
                )
        if config.pe.concat_dim >= config.channels:
            raise ConfigError(
                f"PyGGPSModel: the concatenated PE dims (rwse + lap + maglap = "
                f"{config.pe.concat_dim}) must be smaller than channels ({config.channels}): "
                f"the node embedding gets channels - pe dims features"
            )

    def _conv(self) -> torch.nn.Module:
        from torch_geometric.nn import GINEConv, GPSConv

        c = self.config
        C = c.channels
        attn_kwargs: dict[str, Any] = {"dropout": c.attn_dropout}
        if c.attn == "linear":  # PerformerAttention's shapes as LinearAttention's
            attn_kwargs.update(head_channels=C // c.heads, qkv_bias=True)
        norm, norm_kwargs = PYG_NORMS[c.norm]
        return GPSConv(
            C,
            GINEConv(Sequential(Linear(C, C), ReLU(), Linear(C, C))),
            heads=c.heads,
            dropout=c.dropout,
            norm=norm,
            norm_kwargs=norm_kwargs,
            attn_type=PYG_ATTN_TYPES[c.attn],
            attn_kwargs=attn_kwargs,
        )

    def reset_parameters(self) -> None:
        super().reset_parameters()  # GPSConv.reset_parameters for the layers
        if hasattr(self, "num_train_forwards"):
            self.num_train_forwards.zero_()

    def _redraw(self) -> None:
        """Performer: new random features every :data:`PERFORMER_REDRAW_INTERVAL` training
        forwards (PyG's example's ``RedrawProjection``)."""
        if not self.training or self.config.attn != "linear":
            return
        if int(self.num_train_forwards) >= PERFORMER_REDRAW_INTERVAL:
            for conv in self.layers:
                conv.attn.redraw_projection_matrix()
            self.num_train_forwards.zero_()
        else:
            self.num_train_forwards += 1

    def forward(self, data: Any) -> Tensor:
        kw = self.encode(data)
        x, batch, num_graphs = kw.pop("x"), kw.pop("batch"), kw.pop("num_graphs")
        edge_index, edge_attr = kw.pop("edge_index"), kw.pop("edge_attr")
        assert not kw, f"PyGGPSModel: unexpected layer inputs {sorted(kw)}"
        if edge_attr is None:  # GINEConv needs edge features: zeros give ReLU(x_j) messages
            edge_attr = x.new_zeros(edge_index.size(1), x.size(1))
        self._redraw()
        for conv in self.layers:
            x = conv(x, edge_index, batch, edge_attr=edge_attr)
        if self.graph_level:
            pool = scatter_mean if self.config.pool == "mean" else scatter_sum
            x = pool(x, batch, num_graphs)
        return self.head(x)

    # -- weights from / to a GPSModel ----------------------------------------------------------
    def _key_map(self) -> list[tuple[str, str]]:
        """``(GPSModel key prefix, PyGGPSModel key prefix)`` pairs of the layer weights."""
        pairs: list[tuple[str, str]] = []
        for i in range(self.config.num_layers):
            g, p = f"layers.{i}.", f"layers.{i}."
            pairs.append((g + "local.", p + "conv."))
            pairs.append((g + "mlp.", p + "mlp."))
            for k in (1, 2, 3):
                sub = ".module." if self.config.norm == "batch" else "."
                pairs.append((g + f"norm{k}.", p + f"norm{k}{sub}"))
            if self.config.attn == "full":
                pairs.append((g + "attn.", p + "attn."))
        return pairs

    def _performer_keys(self, i: int) -> list[tuple[str, str, int | None]]:
        """``(GPSModel key, PyGGPSModel key, chunk of the fused in-projection)`` of layer ``i``."""
        g, p = f"layers.{i}.attn.", f"layers.{i}.attn."
        out: list[tuple[str, str, int | None]] = []
        for j, name in enumerate("qkv"):
            out.append((g + "in_proj_weight", p + f"{name}.weight", j))
            out.append((g + "in_proj_bias", p + f"{name}.bias", j))
        out.append((g + "out_proj.weight", p + "attn_out.weight", None))
        out.append((g + "out_proj.bias", p + "attn_out.bias", None))
        return out

    def _pyg_state(self, gps_state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A :class:`GPSModel` state dict in this model's names (performer random features and
        the redraw counter are kept from this model)."""
        pairs = self._key_map()
        out: dict[str, Tensor] = {}
        for key, value in gps_state.items():
            if not key.startswith("layers."):
                out[key] = value
                continue
            for g, p in pairs:
                if key.startswith(g):
                    out[p + key[len(g):]] = value
                    break
        if self.config.attn == "linear":
            for i in range(self.config.num_layers):
                for g, p, j in self._performer_keys(i):
                    v = gps_state[g]
                    out[p] = v.chunk(3)[j] if j is not None else v
        own = self.state_dict()
        for key in own:  # PerformerAttention's projection matrix, the redraw counter
            out.setdefault(key, own[key])
        return out

    def _gps_state(self) -> dict[str, Tensor]:
        """This model's state dict in :class:`GPSModel`'s names (without the performer random
        features, which GPSModel draws its own way)."""
        pairs = self._key_map()
        out: dict[str, Tensor] = {}
        for key, value in self.state_dict().items():
            if key == "num_train_forwards":
                continue
            if not key.startswith("layers."):
                out[key] = value
                continue
            for g, p in pairs:
                if key.startswith(p):
                    out[g + key[len(p):]] = value
                    break
        if self.config.attn == "linear":
            sd = self.state_dict()
            for i in range(self.config.num_layers):
                keys = self._performer_keys(i)
                for g in {g for g, _, _ in keys}:
                    parts = [sd[p] for gg, p, _ in keys if gg == g]
                    out[g] = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out

    @classmethod
    def from_gps(cls, model: GPSModel) -> PyGGPSModel:
        """A :class:`PyGGPSModel` with the config (``arch='pyg-gps'``), arguments and weights
        of ``model`` (a :class:`GPSModel`); with ``attn='full'`` both compute the same function
        (same training mode, the same dropout masks aside)."""
        config = dataclasses.replace(model.config, arch="pyg-gps")
        new = cls(config, **_arguments(model))
        param = next(model.parameters())
        new.to(device=param.device, dtype=param.dtype)
        new.load_state_dict(new._pyg_state(model.state_dict()))
        new.train(model.training)
        return new

    def to_gps(self) -> GPSModel:
        """The :class:`GPSModel` (``arch='gps'``) with this model's weights (the inverse of
        :meth:`from_gps`)."""
        config = dataclasses.replace(self.config, arch="gps")
        gps = GPSModel(config, **_arguments(self))
        param = next(self.parameters())
        gps.to(device=param.device, dtype=param.dtype)
        own = gps.state_dict()
        state = self._gps_state()
        for key in own:  # LinearAttention's random features and draw counter
            state.setdefault(key, own[key])
        gps.load_state_dict(state)
        gps.train(self.training)
        return gps


def _arguments(model: GPSModel) -> dict[str, Any]:
    return dict(
        out_dim=model.out_dim,
        node_input=model.node_input,
        node_in_dim=model.node_in_dim,
        edge_input=model.edge_input,
        edge_in_dim=model.edge_in_dim,
        graph_level=model.graph_level,
        directed=model.directed,
    )
