"""``validate=False``, torch meta tensors and sparse tensors: the value checks can be skipped
(for vmap, torch.compile and gradcheck), the shape, axis and base checks cannot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossentropy import info

torch = pytest.importorskip("torch")

SINGLE = ["entropy", "perplexity"]
PAIRS = ["cross_entropy", "kl_divergence", "js_divergence"]
ELEMENTWISE = ["information", "binary_entropy", "normalize"]
ALL = SINGLE + PAIRS + ELEMENTWISE


def _arguments(name, p, q):
    return (p, q) if name in PAIRS else (p,)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Five float64 distributions over four outcomes each, with zeros in p and in q."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(5, 4, generator=generator, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(5, 4, generator=generator, dtype=torch.float64), -1)
    p[0] = torch.tensor([0.0, 0.25, 0.75, 0.0], dtype=torch.float64)
    q[1] = torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    p[1] = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    return p, q


@pytest.mark.parametrize("name", ALL)
def test_vmap_with_validate_false_matches_the_loop(name):
    # The value checks read the values on the host (bool of a tensor), which vmap forbids.
    p, q = _batch()
    function = getattr(info, name)
    if name in PAIRS:
        mapped = torch.func.vmap(lambda a, b: function(a, b, validate=False))(p, q)
        looped = torch.stack([function(a, b) for a, b in zip(p, q, strict=True)])
    else:
        mapped = torch.func.vmap(lambda a: function(a, validate=False))(p)
        looped = torch.stack([function(a) for a in p])
    torch.testing.assert_close(mapped, looped, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("name", ALL)
def test_vmap_with_the_default_skips_the_value_checks(name):
    """Inside a transform the values cannot be read: the checks step aside on their own, as
    the losses' do, and the numbers are the loop's."""
    p, q = _batch()
    function = getattr(info, name)
    if name in PAIRS:
        mapped = torch.func.vmap(function)(p, q)
        looped = torch.stack([function(a, b) for a, b in zip(p, q, strict=True)])
    else:
        mapped = torch.func.vmap(function)(p)
        looped = torch.stack([function(a) for a in p])
    torch.testing.assert_close(mapped, looped, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("name", ALL)
def test_fake_tensors_give_shapes(name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    function = getattr(info, name)
    with FakeTensorMode():
        p = torch.softmax(torch.randn(3, 4, dtype=torch.float64), -1)
        result = function(*_arguments(name, p, p))
        expected = (3, 4) if name in ELEMENTWISE else (3,)
        assert tuple(result.shape) == expected


def test_vmap_over_the_second_argument_only():
    p, q = _batch()
    mapped = torch.func.vmap(lambda b: info.kl_divergence(p[2], b, validate=False))(q)
    looped = torch.stack([info.kl_divergence(p[2], b) for b in q])
    torch.testing.assert_close(mapped, looped, rtol=1e-15, atol=1e-15)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.parametrize("name", ["entropy", "cross_entropy", "kl_divergence", "js_divergence"])
def test_torch_compile_fullgraph_with_validate_false(name):
    p, q = _batch(1)
    function = getattr(info, name)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda *args: function(*args, validate=False), fullgraph=True, backend="eager"
    )
    args = _arguments(name, p, q)
    torch.testing.assert_close(compiled(*args), function(*args), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_on_raw_inputs_with_validate_false(name):
    # gradcheck moves single entries by 1e-6, so the sums leave float64's tolerance: the
    # checks must be off. Entries stay away from 0, where the masked terms have a kink.
    generator = torch.Generator().manual_seed(2)
    p = (torch.rand(3, 4, generator=generator, dtype=torch.float64) * 0.3 + 0.1).requires_grad_()
    q = (torch.rand(3, 4, generator=generator, dtype=torch.float64) * 0.3 + 0.1).requires_grad_()
    function = getattr(info, name)
    inputs = _arguments(name, p, q)
    assert torch.autograd.gradcheck(lambda *a: function(*a, validate=False), inputs)
    if name in SINGLE + PAIRS:  # with the checks, raw inputs are refused
        with pytest.raises(ValueError, match=r"must sum to 1"):
            torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("name", ALL)
def test_meta_tensors_give_meta_results_of_the_right_shape(name):
    # A meta tensor has no values to check (item() fails): shapes only.
    p = torch.empty(3, 1, 5, device="meta", dtype=torch.float32)
    q = torch.empty(2, 5, device="meta", dtype=torch.float64)
    function = getattr(info, name)
    if name in PAIRS:
        expected = {False: (3, 2), True: (3, 2, 1)}
        for keepdims in (False, True):
            result = function(p, q, keepdims=keepdims)
            assert result.device.type == "meta"
            assert tuple(result.shape) == expected[keepdims]
            assert result.dtype == torch.float64
        assert tuple(function(p, q, axis=0).shape) == (2, 5)
    elif name in SINGLE:
        result = function(p)
        assert result.device.type == "meta"
        assert tuple(result.shape) == (3, 1)
        assert result.dtype == torch.float32
        assert tuple(function(p, axis=0).shape) == (1, 5)
    else:
        result = function(p)
        assert result.device.type == "meta"
        assert tuple(result.shape) == (3, 1, 5)
        assert result.dtype == torch.float32


def test_meta_tensors_still_get_the_shape_checks():
    p = torch.empty(3, 4, device="meta")
    with pytest.raises(ValueError, match=r"`axis` must be in \[-2, 1\]"):
        info.entropy(p, axis=2)
    with pytest.raises(ValueError, match=r"`p` must have at least one outcome along axis -1"):
        info.entropy(torch.empty(3, 0, device="meta"))
    with pytest.raises(ValueError, match=r"must have shapes that broadcast together"):
        info.kl_divergence(p, torch.empty(3, 5, device="meta"))
    with pytest.raises(ValueError, match=r"`base` must be a finite number > 0 and != 1"):
        info.cross_entropy(p, p, base=1)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("name", ALL)
def test_sparse_tensors_are_refused_by_name(name, layout):
    dense = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    sparse = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    names = ("p", "q") if name in PAIRS else ("x",) if name == "normalize" else ("p",)
    for position, argument in enumerate(names):
        values = [dense] * len(names)
        values[position] = sparse
        with pytest.raises(
            TypeError,
            match=rf"^`{argument}` must be a dense tensor; got a sparse tensor \(layout "
            rf"torch\.sparse_{layout}\); pass `{argument}\.to_dense\(\)`$",
        ):
            getattr(info, name)(*values)


@pytest.mark.parametrize("name", ALL)
def test_validate_false_skips_the_value_checks_only(xp, name):
    function = getattr(info, name)
    bad = xp.asarray([[0.5, 0.6], [-0.2, 1.2]])  # a sum off 1, entries outside [0, 1]
    function(*_arguments(name, bad, bad), validate=False)
    with pytest.raises(ValueError, match=r"^`[pqx]` must (be non-negative|sum to 1)"):
        function(*_arguments(name, bad, bad))
    good = xp.asarray([[0.5, 0.5]])
    arguments = _arguments(name, good, good)
    if name not in ("information", "binary_entropy"):
        with pytest.raises(ValueError, match=r"`axis` must be in \[-2, 1\]"):
            function(*arguments, axis=2, validate=False)
        with pytest.raises(TypeError, match=r"`axis` must be an integer"):
            function(*arguments, axis=1.0, validate=False)
    if name not in ("perplexity", "normalize"):
        with pytest.raises(ValueError, match=r"`base` must be a finite number > 0 and != 1"):
            function(*arguments, base=1, validate=False)
        with pytest.raises(TypeError, match=r"`base` must be a real number"):
            function(*arguments, base="2", validate=False)
    with pytest.raises(TypeError, match=r"must be an array of real numbers"):
        function(*_arguments(name, ["a", "b"], ["a", "b"]), validate=False)
    for flag in ("no", None, 0):
        with pytest.raises(TypeError, match=r"^`validate` must be True or False; got "):
            function(*arguments, validate=flag)


def test_validate_false_still_needs_outcomes_and_broadcasting(xp):
    empty = xp.asarray(np.zeros((2, 0)))
    for name in [*SINGLE, "normalize"]:
        with pytest.raises(ValueError, match=r"must have at least one (outcome|entry) along"):
            getattr(info, name)(empty, validate=False)
    for name in PAIRS:
        with pytest.raises(ValueError, match=r"`q` must have at least one outcome along"):
            getattr(info, name)(xp.asarray([1.0]), empty, validate=False)
        with pytest.raises(ValueError, match=r"must have shapes that broadcast together"):
            getattr(info, name)(xp.asarray([0.5, 0.5]), xp.asarray([1 / 3] * 3), validate=False)


def test_validate_false_gives_the_same_numbers_on_valid_input(xp, rng):
    p = rng.dirichlet(np.ones(6), size=4)
    q = rng.dirichlet(np.ones(6), size=4)
    p[0, :2] = 0
    p[0] /= p[0].sum()
    for name in ALL:
        arguments = _arguments(name, xp.asarray(p), xp.asarray(q))
        function = getattr(info, name)
        np.testing.assert_array_equal(
            xp.to_numpy(function(*arguments, validate=False)), xp.to_numpy(function(*arguments))
        )


def test_normalize_without_checks_still_mends_an_overflowing_sum(xp):
    got = xp.to_numpy(info.normalize(xp.asarray([[1e308, 1e308], [1.0, 3.0]]), validate=False))
    np.testing.assert_array_equal(got, [[0.5, 0.5], [0.25, 0.75]])
    assert math.isfinite(got.sum())
