r"""Polynormer: local-to-global polynomial attention in linear time (Deng et al., ICLR 2024)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, ModuleList

from gtpe.models.config import ConfigError, GPSModelConfig
from gtpe.models.gps_model import _feature_encoder, check_model_arguments
from gtpe.models.sgformer_model import (
    boolean,
    make_head,
    non_negative_int,
    one_of,
    read_input,
    readout,
    reject_unread,
    resolve_options,
    unit_interval,
)
from gtpe.nn.attention.polynormer import LOCAL_CONVS, PolynormerAttention, PolynormerLocal

__all__ = ["PolynormerModel"]


class PolynormerModel(torch.nn.Module):
    r"""Polynormer (Deng et al., `"Polynormer: Polynomial-Expressive Graph Transformer in
    Linear Time" <https://arxiv.org/abs/2403.01232>`_, ICLR 2024), the local-to-global
    scheme of the paper and its official code:

    .. math::
        X^{(0)} &= \mathrm{Drop}\big(\mathrm{Drop}_{\mathrm{in}}(X)\, W_I + b_I\big),\qquad
        X^{(\ell)} = \mathrm{Local}_\ell\big(X^{(\ell-1)}\big),\ \ell = 1..L,\qquad
        X_{\mathrm{loc}} = \textstyle\sum_{\ell=1}^{L} X^{(\ell)},\\
        \mathrm{Local}(X) &= (1 - \beta) \odot \mathrm{LN}(H \odot \tilde X) + \beta \odot \tilde X,
            \quad H = \mathrm{ReLU}(X W_H + b_H),\quad
            \tilde X = \mathrm{Drop}\big(\mathrm{ReLU}(\mathrm{BN}(A_{\mathrm{GAT}} X W_G + X W_L + b_L))\big),\\
        G^{(0)} &= \mathrm{LN}(X_{\mathrm{loc}}),\qquad G^{(m)} = \mathrm{Global}_m\big(G^{(m-1)}\big),
            \ m = 1..M,\qquad Y = G^{(M)} W_O + b_O,\\
        \mathrm{Global}(G) &= \mathrm{Drop}_g\Big(\mathrm{ReLU}\big(\big[\mathrm{LN}(
            \tfrac{\sigma(G W_Q)\, (\sigma(G W_K)^\top G W_V)}{\sigma(G W_Q)\,
            (\sigma(G W_K)^\top \mathbf 1)}) \odot (G W_H + b_H + \beta)\big] W_P + b_P\big)\Big),

    per head, :math:`W_Q = W_K` (``qk_shared``, the official default).  Local layers are
    :class:`~gtpe.nn.attention.polynormer.PolynormerLocal` (GAT scores over the in-edges, no
    extra self-loops; the official code adds one self-loop per node to the graph beforehand,
    ``self_loops``), global layers :class:`~gtpe.nn.attention.polynormer.PolynormerAttention`
    (each graph of a batch attends to itself; :math:`O(N C^2)`).  :math:`\beta` is learned per
    channel and layer as :math:`\sigma(\theta)` (the official ``--beta -1``) or a constant.
    Each gate multiplies the attention output by a linear function of the input, so ``L``
    local layers make a polynomial of degree :math:`2^L` in :math:`X`.

    **Two stages** (the official training): the first ``local_steps`` training forward passes
    use only the local stage, with its own output layer :math:`Y = X_{\mathrm{loc}} W'_O +
    b'_O`; from then on the global stage is on (evaluation follows the stage of the last
    training pass).  The count is the buffer ``steps`` (kept in checkpoints, so a resumed run
    continues in its stage): training forward passes, or, once :meth:`set_epoch` is called
    (``gtpe train`` calls it before every epoch, full-batch or ``train.loader: neighbor``),
    epochs.  ``local_steps: 0`` trains both stages together from the start.
    The official code also reloads the best local-stage checkpoint when the global stage
    starts; gtpe's loop does not (the run continues from the last local step).

    Config (:class:`~gtpe.models.config.GPSModelConfig`, ``arch: polynormer``): ``channels``
    (the width :math:`C` = heads x the official ``hidden_channels``), ``num_layers`` (local
    layers :math:`L`), ``heads`` (GAT and global heads), ``local`` (must be ``null``: the local
    stage is part of the arch, ``local_conv``), ``attn`` (must be ``polynormer``),
    ``dropout`` (the official ``dropout``: after :math:`W_I` and in every local layer),
    ``input_dropout`` (the official ``in_dropout``, 0.15 there), ``norm`` (``null``, the
    official code, or ``batch``: BatchNorm before the local ReLU, PyG's ``post_bn``), ``head``
    (``linear``: the official :math:`W_O, b_O`; ``mlp``: Linear-ReLU-Linear), ``pool`` (graph
    level: mean / add over each graph before the output layer), and ``arch_options``
    (defaults: the official code's):

    * ``global_layers`` (2): :math:`M` (0: the local stage alone, as PyG's ``Polynormer``
      before its ``_global`` switch);
    * ``beta`` (``null``: learned; a number in [0, 1]: that constant, PyG's default 0.9);
    * ``global_dropout`` (``null`` = ``dropout``): :math:`\mathrm{Drop}_g`;
    * ``local_conv`` (``gat``): ``gat`` (the paper) or ``gcn`` (:math:`\hat D^{-1/2}\hat
      A\hat D^{-1/2}` instead of the GAT scores, PyG's default);
    * ``qk_shared`` (true): :math:`W_Q = W_K`;
    * ``self_loops`` (true): the GAT layers see each node's self-loop (existing ones are
      replaced by one per node), as the official preprocessing (``local_conv: gcn`` always
      adds its own, :math:`\hat A = A + I`);
    * ``local_steps`` (0): training passes of the local stage alone (above; the official
      runs use 100-200 epochs).

    ``attn_dropout``, ``residual``, ``ffn``, ``fold_linear`` and ``pe`` are not read
    (non-default values are a :class:`ConfigError`); edge features are not read.  A
    ``directed`` graph is used as given (the official code symmetrises its graphs first).
    ``forward(data)`` reads ``x``, ``edge_index``, ``batch`` and returns ``[N, out_dim]`` or
    ``[num_graphs, out_dim]`` (``graph_level``).
    """

    OPTIONS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
        "global_layers": (2, non_negative_int, "an integer >= 0"),
        "beta": (None, lambda v: v is None or unit_interval()(v), "null (learned) or a number in [0, 1]"),
        "global_dropout": (None, lambda v: v is None or unit_interval(hi_open=True)(v), "null or in [0, 1)"),
        "local_conv": ("gat", one_of(*LOCAL_CONVS), f"one of {list(LOCAL_CONVS)}"),
        "qk_shared": (True, boolean, "true or false"),
        "self_loops": (True, boolean, "true or false"),
        "local_steps": (0, non_negative_int, "an integer >= 0"),
    }

    @classmethod
    def options(cls, config: GPSModelConfig) -> dict[str, Any]:
        """``config.arch_options`` over the defaults (checked)."""
        return resolve_options("polynormer", config.arch_options, cls.OPTIONS)

    @classmethod
    def check_config(cls, config: GPSModelConfig) -> None:
        """Validate ``arch_options`` and the general fields for ``arch: polynormer``."""
        cls.options(config)
        if config.attn != "polynormer":
            raise ConfigError(
                f"GPSModelConfig: arch='polynormer' needs attn: polynormer (its global "
                f"attention), got attn={config.attn!r}"
            )
        if config.local is not None:
            raise ConfigError(
                f"GPSModelConfig: arch='polynormer' has its own local attention "
                f"(arch_options.local_conv); set local: null, got local={config.local!r}"
            )
        if config.norm not in ("batch", None):
            raise ConfigError(
                f"GPSModelConfig: arch='polynormer' takes norm: null (the official code) or "
                f"batch (BatchNorm in the local layers, PyG's post_bn), got {config.norm!r}"
            )
        reject_unread("polynormer", config, ("attn_dropout", "residual", "ffn", "fold_linear"))

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
        super().__init__()
        check_model_arguments("PolynormerModel", config, out_dim, node_input, arch="polynormer")
        self.check_config(config)
        opt = self.options(config)
        self.config, self.opt = config, opt
        self.out_dim = out_dim
        self.node_input, self.node_in_dim = node_input, node_in_dim
        self.edge_input, self.edge_in_dim = edge_input, edge_in_dim
        self.graph_level, self.directed = bool(graph_level), bool(directed)
        C, H = config.channels, config.heads
        self.dropout = float(config.dropout)
        gd = opt["global_dropout"]
        self.global_dropout = float(config.dropout if gd is None else gd)
        self.local_steps = int(opt["local_steps"])

        self.encoder = _feature_encoder(node_input, node_in_dim, C, "node")  # W_I
        self.locals = ModuleList(
            [
                PolynormerLocal(C, heads=H, beta=opt["beta"], conv=opt["local_conv"],
                                dropout=self.dropout, batch_norm=config.norm == "batch")
                for _ in range(config.num_layers)
            ]
        )
        M = opt["global_layers"]
        self.globals = ModuleList(
            [
                PolynormerAttention(C, heads=H, beta=opt["beta"], qk_shared=opt["qk_shared"],
                                    dropout=self.global_dropout)
                for _ in range(M)
            ]
        )
        self.global_norm = LayerNorm(C) if M > 0 else None
        self.head = make_head(config.head, C, C, out_dim) if M > 0 else None  # W_O
        # the local stage's own output layer W'_O: only where it is used
        self.local_head = (
            make_head(config.head, C, C, out_dim) if M == 0 or self.local_steps > 0 else None
        )
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.epoch_driven = False  # set_epoch() was called: steps counts epochs
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.steps.zero_()

    def set_epoch(self, epoch: int) -> None:
        """Count epochs instead of forward passes from now on: the stage of epoch ``epoch``
        (0-based) is the global one when ``epoch >= local_steps``, for training and for the
        evaluation after it."""
        self.epoch_driven = True
        self.steps.fill_(int(epoch))

    def global_stage(self) -> bool:
        """Whether the next forward pass runs the global stage (see the class docstring)."""
        if not len(self.globals):
            return False
        if self.training or self.epoch_driven:
            return int(self.steps) >= self.local_steps
        return max(int(self.steps) - 1, 0) >= self.local_steps

    def local_stage(self, x: Tensor, edge_index: Tensor) -> Tensor:
        r""":math:`X_{\mathrm{loc}}` ``[N, C]`` from the encoded features :math:`X^{(0)}`."""
        if self.opt["self_loops"] and self.opt["local_conv"] == "gat":
            src, dst = edge_index
            keep = src != dst
            loop = torch.arange(x.size(0), device=edge_index.device, dtype=edge_index.dtype)
            edge_index = torch.cat([edge_index[:, keep], loop.expand(2, -1)], dim=1)
        cache: dict[str, Any] = {}
        out: Tensor | None = None
        for layer in self.locals:
            x = layer(x, edge_index, cache=cache)
            out = x if out is None else out + x
        assert out is not None
        return out

    def forward(self, data: Any) -> Tensor:
        x, batch, num_graphs = read_input("PolynormerModel", data, self.config.input_dropout, self.training)
        use_global = self.global_stage()
        if self.training and not self.epoch_driven:
            self.steps += 1
        h = F.dropout(self.encoder(x), self.dropout, self.training)
        h = self.local_stage(h, data.edge_index)
        if use_global:
            assert self.global_norm is not None and self.head is not None
            h = self.global_norm(h)
            for layer in self.globals:
                h = layer(h, batch, num_graphs)
            head = self.head
        else:
            assert self.local_head is not None
            head = self.local_head
        return head(readout(h, batch, num_graphs, self.graph_level, self.config.pool))

    def __repr__(self) -> str:
        c, o = self.config, self.opt
        beta = "learned" if o["beta"] is None else o["beta"]
        return (
            f"{self.__class__.__name__}(channels={c.channels}, local_layers={c.num_layers}, "
            f"global_layers={o['global_layers']}, heads={c.heads}, local_conv={o['local_conv']!r}, "
            f"beta={beta}, local_steps={self.local_steps}, out_dim={self.out_dim}, "
            f"graph_level={self.graph_level})"
        )
