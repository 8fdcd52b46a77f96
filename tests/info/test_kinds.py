"""Results keep the input's kind, device and floating dtype; odd inputs are handled sensibly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossentropy import info

torch = pytest.importorskip("torch")

P = [0.5, 0.2, 0.2, 0.1]
Q = [0.25, 0.25, 0.25, 0.25]
REDUCTIONS = ["entropy", "perplexity"]
PAIRS = ["cross_entropy", "kl_divergence", "js_divergence"]
ELEMENTWISE = ["information", "binary_entropy"]


def _call(name, *args):
    return getattr(info, name)(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_numpy_dtype_is_kept(dtype):
    p = np.array([P, Q], dtype=dtype)
    q = np.array([Q, P], dtype=dtype)
    for name in REDUCTIONS + ELEMENTWISE:
        assert _call(name, p).dtype == dtype, name
    for name in PAIRS:
        assert _call(name, p, q).dtype == dtype, name
    assert info.normalize(p).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_kind_and_dtype_are_kept(dtype):
    p = torch.tensor([P, Q], dtype=dtype)
    q = torch.tensor([Q, P], dtype=dtype)
    for name in REDUCTIONS + ELEMENTWISE:
        result = _call(name, p)
        assert isinstance(result, torch.Tensor), name
        assert result.dtype == dtype, name
        assert result.device == p.device
    for name in PAIRS:
        result = _call(name, p, q)
        assert isinstance(result, torch.Tensor), name
        assert result.dtype == dtype, name
    assert info.normalize(p).dtype == dtype


def test_torch_autograd_flows_through_cross_entropy():
    logits = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    q = torch.softmax(logits, dim=0)
    p = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    info.cross_entropy(p, q, base=math.e).backward()
    # d/dlogits of -log softmax(logits)[1] is softmax - onehot.
    torch.testing.assert_close(logits.grad, q.detach() - p)


def test_sequence_takes_the_kind_and_dtype_of_the_array_beside_it():
    q = torch.tensor(Q, dtype=torch.float32)
    result = info.cross_entropy(P, q)
    assert isinstance(result, torch.Tensor)
    assert result.dtype == torch.float32
    assert float(result) == pytest.approx(2.0, abs=1e-6)
    assert info.cross_entropy(q, P).dtype == torch.float32


def test_mixed_float_dtypes_promote():
    p = np.array(P, dtype=np.float32)
    q = np.array(Q, dtype=np.float64)
    assert np.asarray(info.cross_entropy(p, q)).dtype == np.float64


def test_python_input_gives_numpy_scalars_and_arrays():
    h = info.entropy(P)
    assert isinstance(h, np.float64)  # also a Python float
    assert isinstance(h, float)
    assert isinstance(info.information(0.5), np.float64)
    assert isinstance(info.information(P), np.ndarray)
    assert info.entropy([P, Q]).shape == (2,)


def test_integer_and_boolean_input_is_promoted_to_the_default_float():
    assert info.entropy([0, 1, 0]) == 0.0
    assert info.entropy(np.array([0, 1, 0])).dtype == np.float64
    assert info.entropy(np.array([False, True])).dtype == np.float64
    assert info.cross_entropy([0, 1], [1, 0]) == math.inf
    assert info.entropy(torch.tensor([0, 1, 0])).dtype == torch.get_default_dtype()
    assert info.normalize([5, 2, 2, 1]).dtype == np.float64
    assert info.information(np.array([1])).dtype == np.float64


def test_no_negative_zero_for_certain_outcomes(xp):
    one_hot = xp.asarray([0.0, 1.0, 0.0])
    for value in (
        info.entropy(one_hot),
        info.cross_entropy(one_hot, one_hot),
        info.kl_divergence(one_hot, one_hot),
        info.js_divergence(one_hot, one_hot),
        info.information(xp.asarray(1.0)),
        info.binary_entropy(xp.asarray(1.0)),
    ):
        assert math.copysign(1.0, float(value)) == 1.0


def test_zero_times_log_zero_is_zero(xp):
    p = xp.asarray([0.0, 0.0, 1.0])
    assert float(info.entropy(p)) == 0.0
    assert float(info.cross_entropy(p, xp.asarray([0.0, 0.5, 0.5]))) == 1.0
    assert float(info.kl_divergence(p, xp.asarray([0.0, 0.5, 0.5]))) == 1.0
    assert float(info.js_divergence(p, xp.asarray([1.0, 0.0, 0.0]))) == 1.0


def test_information_of_impossible_event_is_infinite(xp):
    assert float(info.information(xp.asarray(0.0))) == math.inf
    assert float(info.information(xp.asarray(1.0))) == 0.0


def test_gradients_stay_finite_where_outcomes_never_happen():
    # The masked branch of `where` is differentiated too; it must hold no log 0.
    p = torch.tensor([[0.0, 1.0, 0.0], [0.25, 0.75, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    for name in ("cross_entropy", "kl_divergence", "js_divergence"):
        q.grad = None
        getattr(info, name)(p, q).sum().backward()
        assert torch.isfinite(q.grad).all(), name
    # d/dq of -Σ p log q is -p / q where p > 0, and nothing flows where p = 0.
    q.grad = None
    info.cross_entropy(p, q, base=math.e).sum().backward()
    expected = torch.tensor([[0.0, -1.0, 0.0], [-0.5, -1.5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(q.grad, expected)
    x = p.clone().requires_grad_(True)
    info.entropy(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    b = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64, requires_grad=True)
    info.binary_entropy(b).sum().backward()
    assert torch.isfinite(b.grad).all()


def _js_masked_reference(p, q):
    """JS in bits as the math reads, each p log(p / m) term masked with torch.where where
    the weight is 0 (the function's own convention), in float64."""
    m = (p + q) / 2

    def term(x):
        present = x > 0
        x_safe = torch.where(present, x, torch.ones_like(x))
        m_safe = torch.where(present, m, torch.ones_like(m))
        return torch.where(present, x * torch.log2(x_safe / m_safe), torch.zeros_like(x))

    return ((term(p) + term(q)) / 2).sum(-1)


@pytest.mark.parametrize(
    ("p", "q"),
    [
        ([0.0, 1.0], [1.0, 0.0]),  # one side 0, the other exactly 1, at both outcomes
        ([1.0, 0.0], [0.0, 1.0]),
        ([0.0, 0.3, 0.7], [1.0, 0.0, 0.0]),
        ([0.2, 0.0, 0.8], [0.0, 1.0, 0.0]),
        ([[0.0, 1.0], [0.5, 0.5]], [[1.0, 0.0], [0.25, 0.75]]),
    ],
)
def test_js_gradient_is_finite_where_one_side_is_zero_and_the_other_one(p, q):
    # The p - q handed to the near-branch was not masked where p = 0: log1p(-1) = -inf in
    # the dropped branch, and backward gave 0 · inf = NaN for every entry.
    p_ours = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    q_ours = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    p_ref = p_ours.detach().clone().requires_grad_(True)
    q_ref = q_ours.detach().clone().requires_grad_(True)
    value = info.js_divergence(p_ours, q_ours)
    value.sum().backward()
    expected = _js_masked_reference(p_ref, q_ref)
    expected.sum().backward()
    torch.testing.assert_close(value, expected, rtol=1e-15, atol=1e-15)
    assert torch.isfinite(p_ours.grad).all()
    assert torch.isfinite(q_ours.grad).all()
    torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(q_ours.grad, q_ref.grad, rtol=1e-13, atol=1e-15)


def test_js_gradient_through_a_saturated_softmax_is_finite():
    # softmax of logits +-400 is exactly one-hot in float64: disjoint supports.
    x = torch.tensor([[-400.0, 400.0], [1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[400.0, -400.0], [0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = y.detach().clone().requires_grad_(True)
    info.js_divergence(x.softmax(-1), y.softmax(-1)).sum().backward()
    _js_masked_reference(x_ref.softmax(-1), y_ref.softmax(-1)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(y.grad).all()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(y.grad, y_ref.grad, rtol=1e-12, atol=1e-15)


def test_the_documented_gradient_convention_at_p_zero():
    # The package docstring: masked terms give gradient 0 at p(x) = 0; binary_entropy keeps
    # the gradient of its other term there, +-1/ln(base).
    ln2 = math.log(2)
    p = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    info.entropy(p).backward()
    torch.testing.assert_close(p.grad, torch.tensor([-1 / ln2, 0.0], dtype=torch.float64))
    p = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64, requires_grad=True)
    info.cross_entropy(p, q).backward()
    expected_p = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)  # -log2 q where p > 0
    expected_q = torch.tensor([0.0, -2 / ln2, -1 / ln2], dtype=torch.float64)  # -p / (q ln 2)
    torch.testing.assert_close(p.grad, expected_p)
    torch.testing.assert_close(q.grad, expected_q)
    p.grad = q.grad = None
    info.kl_divergence(p, q).backward()
    assert p.grad[0].item() == 0.0
    assert q.grad[0].item() == 0.0
    b = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    info.binary_entropy(b).sum().backward()
    torch.testing.assert_close(b.grad, torch.tensor([1 / ln2, -1 / ln2], dtype=torch.float64))
