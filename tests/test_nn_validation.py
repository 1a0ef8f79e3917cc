"""Clear, one-line errors for bad layer arguments and inputs (instead of crashes deep inside).

Each error names the argument / tensor, what was received and what is expected.
"""

import re

import pytest
import torch

from gtpe.nn import (
    GINE,
    ExphormerAttention,
    FullAttention,
    GatedGCN,
    GPSLayer,
    LinearAttention,
)

N, E, C = 10, 30, 16


@pytest.fixture
def graph():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, generator=g)
    edge_index = torch.randint(0, N, (2, E), generator=g)
    batch = torch.tensor([0] * 4 + [1] * 6)
    edge_attr = torch.randn(E, C, generator=g)
    return x, edge_index, batch, edge_attr


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# constructor arguments


@pytest.mark.parametrize("heads", [0, -4, 2.5, 2.0, True])
def test_gps_layer_rejects_bad_heads(heads):
    with pytest.raises(ValueError, match=r"GPSLayer: heads must be a positive int") as exc:
        GPSLayer(C, heads=heads)
    assert repr(heads) in _one_line(exc)


@pytest.mark.parametrize("attn", [None, torch.nn.Identity()])
def test_gps_layer_rejects_bad_heads_without_builtin_attention(attn):
    with pytest.raises(ValueError, match=r"GPSLayer: heads must be a positive int, got 0"):
        GPSLayer(C, attn=attn, heads=0)


def test_gps_layer_channels_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"GPSLayer: channels \(18\) must be divisible by heads \(4\)"):
        GPSLayer(18, heads=4)


@pytest.mark.parametrize("channels", [0, -8, 16.0])
def test_gps_layer_rejects_bad_channels(channels):
    with pytest.raises(ValueError, match=r"GPSLayer: channels must be a positive int") as exc:
        GPSLayer(channels, heads=2)
    assert repr(channels) in _one_line(exc)


@pytest.mark.parametrize("edge_dim", [0, -3, 2.5])
def test_gps_layer_rejects_bad_edge_dim(edge_dim):
    with pytest.raises(ValueError, match=r"GPSLayer: edge_dim must be a positive int or None"):
        GPSLayer(C, heads=2, edge_dim=edge_dim)


def test_gps_layer_accepts_numpy_ints():
    np = pytest.importorskip("numpy")
    layer = GPSLayer(np.int64(C), heads=np.int64(2))
    assert layer.channels == C and layer.heads == 2 and type(layer.heads) is int
    layer = GPSLayer(torch.tensor(C), heads=torch.tensor(2))
    assert layer.channels == C and type(layer.channels) is int


@pytest.mark.parametrize("cls", [FullAttention, LinearAttention, ExphormerAttention])
@pytest.mark.parametrize("heads", [0, -2, 2.0])
def test_attention_rejects_bad_heads(cls, heads):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: heads must be a positive int"):
        cls(C, heads=heads)


# ---------------------------------------------------------------------------------------------
# forward inputs of GPSLayer


def test_float_batch(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: batch must be an integer tensor") as exc:
        layer(x, ei, batch.float(), ea)
    assert "torch.float32" in _one_line(exc)


def test_negative_batch(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: batch .*got min -1") as exc:
        layer(x, ei, batch - 1, ea)
    _one_line(exc)


def test_batch_beyond_num_graphs(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    msg = r"GPSLayer: batch must hold graph ids in \[0, num_graphs\) = \[0, 1\); got min 0, max 1"
    with pytest.raises(ValueError, match=msg):
        layer(x, ei, batch, ea, num_graphs=1)


def test_batch_wrong_shape(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: batch must be \[N\] = \[10\]; got shape \[9\]"):
        layer(x, ei, batch[:-1], ea)


@pytest.mark.parametrize("bad,what", [(N, "max 10"), (-1, "min -1")])
def test_edge_index_out_of_range(graph, bad, what):
    x, ei, batch, ea = graph
    ei = ei.clone()
    ei[1, 3] = bad
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=rf"GPSLayer: edge_index .*\[0, N\) = \[0, 10\).*{what}") as exc:
        layer(x, ei, batch, ea)
    _one_line(exc)


def test_edge_index_transposed(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: edge_index must be \[2, E\]; got shape \[30, 2\]"):
        layer(x, ei.t(), batch, ea)


def test_edge_index_float(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: edge_index must be an integer tensor.*float32"):
        layer(x, ei.float(), batch, ea)


def test_expander_index_out_of_range(graph):
    # Index N used to read the first virtual node silently (rows N.. are virtual nodes).
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2, attn="exphormer").eval()
    exp = torch.tensor([[0, 1], [N, 2]])
    with pytest.raises(ValueError, match=r"GPSLayer: expander_index .*\[0, 10\).*max 10") as exc:
        layer(x, ei, batch, ea, expander_index=exp)
    _one_line(exc)
    with pytest.raises(ValueError, match=r"GPSLayer: expander_index must be \[2, M\]; got shape \[2\]"):
        layer(x, ei, batch, ea, expander_index=exp[0])


def test_pair_index_out_of_range(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2, attn="grit").eval()
    pi = torch.tensor([[0, 1], [1, N + 5]])
    with pytest.raises(ValueError, match=r"GPSLayer: pair_index .*\[0, 10\).*max 15") as exc:
        layer(x, ei, batch, ea, pair_index=pi, pair_attr=torch.randn(2, C))
    _one_line(exc)


def test_in_range_inputs_pass_and_are_checked_once_per_model_forward(graph, monkeypatch):
    import gtpe.nn.gps as gps

    x, ei, batch, ea = graph
    calls = []
    real = gps.check_index_range
    monkeypatch.setattr(gps, "check_index_range", lambda *a, **k: calls.append(1) or real(*a, **k))
    layers = [GPSLayer(C, heads=2).eval() for _ in range(3)]
    state: dict = {}
    h = x
    for layer in layers:
        h = layer(h, ei, batch, ea, state=state)
    assert h.shape == (N, C)
    assert len(calls) == 1  # the layers share `state`: the indices are checked by the first one
    for layer in layers:  # without a shared state every layer checks
        layer(x, ei, batch, ea)
    assert len(calls) == 4


def test_grit_layers_check_pair_index_once(graph, monkeypatch):
    import gtpe.nn.gps as gps

    x, ei, batch, ea = graph
    checked = []
    real = gps.check_index_range
    monkeypatch.setattr(
        gps, "check_index_range", lambda o, items: checked.append([n for n, *_ in items]) or real(o, items)
    )
    pi = torch.tensor([[0, 1, 5], [1, 0, 6]])
    pa = torch.randn(3, C)
    state: dict = {}
    h = x
    for _ in range(3):
        h = GPSLayer(C, attn="grit", heads=2).eval()(h, ei, batch, ea, pair_index=pi, pair_attr=pa, state=state)
    assert checked == [["edge_index", "pair_index", "batch"]]


@pytest.mark.parametrize("mode", ["compiler.is_compiling", "jit.is_tracing", "jit.is_scripting"])
def test_range_checks_skipped_while_compiling(graph, monkeypatch, mode):
    x, ei, batch, ea = graph
    ei = ei.clone()
    ei[0, 0] = N
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match="GPSLayer: edge_index must hold node ids"):
        layer(x, ei, batch, ea)
    module, name = mode.split(".")
    monkeypatch.setattr(getattr(torch, module), name, lambda: True)
    with pytest.raises(Exception) as exc:  # the raw indexing error, not the check
        layer(x, ei, batch, ea)
    assert "GPSLayer" not in str(exc.value)


def test_edge_attr_1d_integer_types(graph):
    # ZINC: edge_attr is a 1-D long tensor of bond types.
    x, ei, batch, _ = graph
    layer = GPSLayer(C, heads=2).eval()
    ea = torch.randint(0, 3, (E,))
    with pytest.raises(ValueError) as exc:
        layer(x, ei, batch, ea)
    assert _one_line(exc) == (
        "GPSLayer: edge_attr must be [E, channels] = [30, 16] or pass edge_dim; got a 1-D tensor "
        "of shape [30] — embed integer edge types first (torch.nn.Embedding)"
    )


def test_edge_attr_1d_float(graph):
    x, ei, batch, _ = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"got a 1-D tensor of shape \[30\] \(use edge_attr.view\(-1, 1\) "
                       r"with edge_dim=1\)$"):
        layer(x, ei, batch, torch.randn(E))


def test_edge_attr_integer_2d(graph):
    x, ei, batch, _ = graph
    layer = GPSLayer(C, heads=2, edge_dim=1).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: edge_attr must be a float tensor \[E, edge_dim\] "
                       r"= \[30, 1\]; got torch.int64 of shape \[30, 1\] — embed integer edge types"):
        layer(x, ei, batch, torch.randint(0, 3, (E, 1)))


def test_edge_attr_wrong_width_or_rows(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"\[E, channels\] = \[30, 16\] or pass edge_dim; got shape "
                       r"\[30, 3\] \(pass edge_dim=3"):
        layer(x, ei, batch, torch.randn(E, 3))
    with pytest.raises(ValueError, match=r"\[E, channels\] = \[30, 16\].*got shape \[1, 16\]"):
        layer(x, ei, batch, ea[:1])  # used to broadcast silently over all edges
    with_dim = GPSLayer(C, heads=2, edge_dim=3).eval()
    assert with_dim(x, ei, batch, torch.randn(E, 3)).shape == (N, C)
    with pytest.raises(ValueError, match=r"\[E, edge_dim\] = \[30, 3\]; got shape \[30, 16\]"):
        with_dim(x, ei, batch, ea)


def test_edge_attr_gatedgcn_and_exphormer(graph):
    x, ei, batch, ea = graph
    g = GPSLayer(C, local="gatedgcn", attn=None, heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: edge_attr must be \[E, channels\] = \[30, 16\]; "
                       r"got a 1-D tensor"):
        g(x, ei, batch, ea[:, 0])
    ex = GPSLayer(C, local=None, attn="exphormer", heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: edge_attr must be \[E, channels\] = \[30, 16\]"):
        ex(x, ei, batch, ea[:, :4], expander_index=ei)


def test_x_integer_or_wrong_width(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError, match=r"GPSLayer: x must be a float tensor \[N, channels\] = "
                       r"\[N, 16\]; got torch.int64 of shape \[10, 1\] — embed integer node types"):
        layer(torch.randint(0, 5, (N, 1)), ei, batch, ea)
    with pytest.raises(ValueError, match=r"GPSLayer: x must be .*\[N, 16\]; got shape \[10, 8\]"):
        layer(x[:, :8], ei, batch, ea)


# ---------------------------------------------------------------------------------------------
# modules on their own


def test_gine_edge_attr_message(graph):
    x, ei, _, ea = graph
    with pytest.raises(ValueError) as exc:
        GINE(C)(x, ei, torch.randint(0, 3, (E,)))
    assert _one_line(exc) == (
        "GINE: edge_attr must be [E, channels] = [30, 16] or pass edge_dim; got a 1-D tensor of "
        "shape [30] — embed integer edge types first (torch.nn.Embedding)"
    )
    with pytest.raises(ValueError, match=r"GINE: edge_attr must be \[E, edge_dim\] = \[30, 4\]"):
        GINE(C, edge_dim=4)(x, ei, ea)
    with pytest.raises(ValueError, match=r"GINE: edge_index must be \[2, E\]; got shape \[30, 2\]"):
        GINE(C)(x, ei.t(), ea)


def test_gatedgcn_edge_attr_message(graph):
    x, ei, _, ea = graph
    with pytest.raises(ValueError, match=r"GatedGCN: edge_attr must be \[E, channels\] = \[30, 16\]; "
                       r"got shape \[29, 16\]"):
        GatedGCN(C)(x, ei, ea[:-1])


@pytest.mark.parametrize("cls", [FullAttention, LinearAttention])
def test_attention_float_batch(cls, graph):
    x, _, batch, _ = graph
    with pytest.raises(ValueError, match=rf"{cls.__name__}: batch must be an integer tensor.*float32"):
        cls(C, heads=2)(x, batch.float())


def test_exphormer_float_batch_and_bad_expander_shape(graph):
    x, ei, batch, _ = graph
    att = ExphormerAttention(C, heads=2)
    with pytest.raises(ValueError, match=r"ExphormerAttention: batch must be an integer tensor"):
        att(x, ei, batch.float(), expander_index=ei)
    with pytest.raises(ValueError, match=r"ExphormerAttention: expander_index must be \[2, M\]"):
        att(x, ei, batch, expander_index=ei.t())


@pytest.mark.parametrize("batch", [None, torch.zeros(0, dtype=torch.long)])
def test_linear_attention_empty_batch(batch):
    att = LinearAttention(C, heads=2)
    x = torch.randn(0, C, requires_grad=True)
    out = att(x, batch)
    assert out.shape == (0, C)
    out.sum().backward()
    assert x.grad.shape == (0, C)
    assert FullAttention(C, heads=2)(x, batch).shape == (0, C)  # as the others
    empty_edges = torch.zeros(2, 0, dtype=torch.long)
    out, virtual = ExphormerAttention(C, heads=2)(x, empty_edges, batch)
    assert out.shape == (0, C) and virtual.shape == (0, C)


def test_gps_layer_linear_attention_empty_batch():
    layer = GPSLayer(C, attn="linear", heads=2).eval()
    out = layer(torch.randn(0, C), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, C)


def test_messages_name_the_tensor_and_shapes(graph):
    # one line, names the tensor, the shape received and the one expected
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    with pytest.raises(ValueError) as exc:
        layer(x, ei[:, :5], batch, ea)
    msg = _one_line(exc)
    assert re.search(r"edge_attr must be \[E, channels\] = \[5, 16\].*got shape \[30, 16\]", msg), msg


def test_exphormer_edge_attr_message(graph):
    x, ei, batch, ea = graph
    att = ExphormerAttention(C, heads=2, edge_dim=4)
    with pytest.raises(ValueError) as exc:
        att(x, ei, batch, edge_attr=torch.randint(0, 3, (E,)), expander_index=ei)
    assert _one_line(exc) == (
        "ExphormerAttention: edge_attr must be [E, edge_dim] = [30, 4]; got a 1-D tensor of shape "
        "[30] — embed integer edge types first (torch.nn.Embedding)"
    )


def test_int32_indices_still_accepted(graph):
    x, ei, batch, ea = graph
    layer = GPSLayer(C, heads=2).eval()
    ref = layer(x, ei, batch, ea)
    torch.testing.assert_close(layer(x, ei.int(), batch.int(), ea), ref)


def test_index_range_helper_one_sync_and_bounds():
    from gtpe.nn.ops import check_index_range

    ok = torch.tensor([[0, 3], [2, 1]])
    check_index_range("T", [("a", ok, 4, "N"), ("b", torch.zeros(2, 0, dtype=torch.long), 0, "N")])
    with pytest.raises(ValueError, match=r"^T: b must hold node ids in \[0, N\) = \[0, 3\); got min 0, max 3$"):
        check_index_range("T", [("a", ok, 4, "N"), ("b", ok, 3, "N")])
    with pytest.raises(ValueError, match=r"^T: batch must hold graph ids >= 0; got min -2, max 0$"):
        check_index_range("T", [("batch", torch.tensor([-2, 0]), None, "num_graphs")])
