"""The SNOWS solver against closed forms: explicit Hessians, linear solves, least squares."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian, jacobian

from snows_hf.solver import (
    BatchShard,
    HessianOperator,
    NewtonConfig,
    masked_cg,
    newton_refit,
    window_loss,
)

DT = torch.float64
D_IN, D_H, D_OUT = 5, 4, 3


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def make_window(seed=0, n_batches=3, n=8):
    """Two-term window: r0 = X W^T - T0 (the module itself), r1 = gelu(X W^T) V^T - T1."""
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(D_OUT, D_H, generator=g, dtype=DT)
    batches = [
        (
            torch.randn(n, D_IN, generator=g, dtype=DT),
            torch.randn(n, D_H, generator=g, dtype=DT),
            torch.randn(n, D_OUT, generator=g, dtype=DT),
        )
        for _ in range(n_batches)
    ]

    def residual_fn(w, batch):
        X, T0, T1 = batch
        h = X @ w.T
        return [0.5 * (h - T0), F.gelu(h) @ V.T - T1]

    W = torch.randn(D_H, D_IN, generator=g, dtype=DT)
    return residual_fn, W, batches


def explicit_hessian(residual_fn, W, batches):
    H = hessian(lambda w: window_loss(residual_fn, w, batches), W)
    return H.reshape(W.numel(), W.numel())


def explicit_gauss_newton(residual_fn, W, batches):
    """(1/B) sum_b sum_k (2 / numel r_k) J_k^T J_k, from explicit Jacobians."""
    G = torch.zeros(W.numel(), W.numel(), dtype=DT)
    for b in batches:
        jacs = jacobian(lambda w: tuple(residual_fn(w, b)), W)
        for J in jacs:
            J = J.reshape(-1, W.numel())
            G += 2.0 / J.shape[0] * J.T @ J
    return G / len(batches)


# 1. exact HVP = explicit Hessian times v


def test_exact_hvp_matches_explicit_hessian():
    residual_fn, W, batches = make_window()
    v = torch.randn_like(W)
    with HessianOperator(residual_fn, W, batches, "exact") as op:
        hv = op(v)
        loss, grad = op.loss, op.grad
    H = explicit_hessian(residual_fn, W, batches)
    assert rel_err(hv.reshape(-1), H @ v.reshape(-1)) < 1e-6
    Wg = W.clone().requires_grad_(True)
    ref_loss = window_loss(residual_fn, Wg, batches)
    (ref_grad,) = torch.autograd.grad(ref_loss, Wg)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-12)
    assert rel_err(grad, ref_grad) < 1e-12


def test_hvp_reuses_the_graph_and_leaves_w_alone():
    residual_fn, W, batches = make_window()
    calls = []

    def counted(w, b):
        calls.append(1)
        return residual_fn(w, b)

    for kind in ("exact", "gauss-newton"):
        calls.clear()
        op = HessianOperator(counted, W, batches, kind)
        for _ in range(4):
            op(torch.randn_like(W))
        assert len(calls) == len(batches)  # one forward per batch, at construction
        op.close()
        with pytest.raises(RuntimeError):
            op(W)
    assert not W.requires_grad and W.grad is None


# 2. Gauss-Newton = explicit J^T J; linear window: exact == GN == closed form


def test_gauss_newton_matches_explicit_jtj():
    residual_fn, W, batches = make_window(seed=1)
    v = torch.randn_like(W)
    with HessianOperator(residual_fn, W, batches, "gauss-newton") as op:
        hv = op(v)
    G = explicit_gauss_newton(residual_fn, W, batches)
    assert rel_err(hv.reshape(-1), G @ v.reshape(-1)) < 1e-6
    # PSD, unlike the exact Hessian of this nonlinear window
    assert torch.linalg.eigvalsh(G).min() > -1e-10
    assert float((v * hv).sum()) >= 0


def test_linear_window_exact_equals_gauss_newton_equals_closed_form():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(20, D_IN, generator=g, dtype=DT)
    Y = torch.randn(20, D_OUT, generator=g, dtype=DT)
    W = torch.randn(D_OUT, D_IN, generator=g, dtype=DT)
    v = torch.randn_like(W)
    fn = lambda w, b: [b[0] @ w.T - b[1]]
    hv = {k: HessianOperator(fn, W, [(X, Y)], k)(v) for k in ("exact", "gauss-newton")}
    closed = 2.0 / Y.numel() * v @ X.T @ X
    assert rel_err(hv["exact"], hv["gauss-newton"]) < 1e-10
    assert rel_err(hv["exact"], closed) < 1e-10
    assert rel_err(hv["gauss-newton"], closed) < 1e-10


def _gelu_second_derivative(x):
    """d2 gelu / dx2 for the exact (erf) GELU: gelu = x Phi(x), so gelu'' = phi(x) (2 - x^2)."""
    return torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5 * (2 - x * x)


def test_linear_window_through_two_linears_gives_identical_hvps_and_refits():
    """Linear -> Linear: the window is linear in W, so no residual carries curvature and
    the exact Hessian *is* the Gauss-Newton one: the same products, the same re-fit."""
    g = torch.Generator().manual_seed(11)
    V = torch.randn(D_OUT, D_H, generator=g, dtype=DT)
    batches = [tuple(torch.randn(8, d, generator=g, dtype=DT) for d in (D_IN, D_H, D_OUT)) for _ in range(4)]
    fn = lambda w, b: [b[0] @ w.T - b[1], (b[0] @ w.T) @ V.T - b[2]]  # noqa: E731
    W, v = torch.randn(D_H, D_IN, generator=g, dtype=DT), torch.randn(D_H, D_IN, generator=g, dtype=DT)
    hv = {k: HessianOperator(fn, W, batches[:3], k)(v) for k in ("exact", "gauss-newton")}
    # (1/B) sum_b [2/numel(r0) v X^T X + 2/numel(r1) V^T V v X^T X]
    closed = sum(2.0 / (8 * D_H) * v @ X.T @ X + 2.0 / (8 * D_OUT) * V.T @ V @ v @ X.T @ X for X, _, _ in batches[:3]) / 3
    assert rel_err(hv["exact"], hv["gauss-newton"]) < 1e-13
    assert rel_err(hv["exact"], closed) < 1e-12
    mask = torch.rand(W.shape, generator=g, dtype=DT) > 0.5
    refit = {k: newton_refit(W, mask, fn, batches[:3], batches[3:], NewtonConfig(steps=3, hessian=k)) for k in hv}
    assert refit["exact"].steps_accepted >= 1 and rel_err(refit["exact"].weight, W * mask) > 1e-2  # it moved
    assert rel_err(refit["exact"].weight, refit["gauss-newton"].weight) < 1e-12


def test_exact_minus_gauss_newton_is_the_residual_weighted_curvature():
    """Linear -> GELU -> Linear with non-zero residuals: exact - Gauss-Newton is
    (1/B) sum_b 2/numel(r1) sum_i r1_i d2 r1_i / dW2 v, here in closed form (r0 is linear in W,
    r1 = gelu(X W^T) V^T - T1). The term is large, and the re-fit follows the option."""
    residual_fn, W, batches = make_window(seed=12)
    V = torch.randn(D_OUT, D_H, generator=torch.Generator().manual_seed(12), dtype=DT)  # make_window's V
    assert torch.allclose(residual_fn(W, batches[0])[1], F.gelu(batches[0][0] @ W.T) @ V.T - batches[0][2])
    v = torch.randn(W.shape, generator=torch.Generator().manual_seed(14), dtype=DT)
    hv = {k: HessianOperator(residual_fn, W, batches, k)(v) for k in ("exact", "gauss-newton")}
    closed = torch.zeros_like(W)
    for X, _, T1 in batches:
        H = X @ W.T
        R1 = F.gelu(H) @ V.T - T1
        # d2 r1[n, o] / dW[j] dW[j] = V[o, j] gelu''(H[n, j]) X[n] X[n]^T, applied to v[j] and weighted by r1[n, o]
        S = (R1 @ V) * _gelu_second_derivative(H) * (X @ v.T)
        closed += 2.0 / R1.numel() * S.T @ X / len(batches)
    difference = hv["exact"] - hv["gauss-newton"]
    assert rel_err(difference, closed) < 1e-10
    # the same term from explicit matrices: full Hessian minus J^T J
    H_full, G = explicit_hessian(residual_fn, W, batches), explicit_gauss_newton(residual_fn, W, batches)
    assert rel_err(difference.reshape(-1), (H_full - G) @ v.reshape(-1)) < 1e-10
    assert float(difference.norm()) > 0.05 * float(hv["gauss-newton"].norm())  # not a rounding difference
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(13), dtype=DT) > 0.5
    cfg = dict(steps=3, cg_iters=20, cg_rtol=1e-10)
    refit = {k: newton_refit(W, mask, residual_fn, batches[:2], batches[2:], NewtonConfig(hessian=k, **cfg)) for k in hv}
    assert refit["exact"].steps_accepted >= 1 and refit["gauss-newton"].steps_accepted >= 1
    assert rel_err(refit["exact"].weight, refit["gauss-newton"].weight) > 1e-3


# 3. several batches: mean of single-batch operators; keep_graphs=False is the same


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
def test_multi_batch_is_mean_of_single_batches(kind):
    residual_fn, W, batches = make_window(seed=3, n_batches=4)
    v = torch.randn_like(W)
    full = HessianOperator(residual_fn, W, batches, kind)
    singles = [HessianOperator(residual_fn, W, [b], kind) for b in batches]
    mean_hv = sum(op(v) for op in singles) / len(singles)
    assert rel_err(full(v), mean_hv) < 1e-12
    assert rel_err(full.grad, sum(op.grad for op in singles) / 4) < 1e-12
    assert full.loss == pytest.approx(sum(op.loss for op in singles) / 4, rel=1e-12)

    streamed = HessianOperator(residual_fn, W, batches, kind, keep_graphs=False)
    assert rel_err(streamed(v), full(v)) < 1e-12
    assert rel_err(streamed.grad, full.grad) < 1e-12
    assert streamed.loss == pytest.approx(full.loss, rel=1e-12)


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
@pytest.mark.parametrize("max_graphs", [None, 2, 1])
def test_shards_add_up_to_the_whole(kind, max_graphs):
    """Two processes' shards (even / odd batches) sum to the one-process operator: what
    the all-reduce of a data-parallel run relies on; chunked graphs change nothing."""
    residual_fn, W, batches = make_window(seed=4, n_batches=5)
    v = torch.randn_like(W)
    whole = HessianOperator(residual_fn, W, batches, kind)
    ids = {id(b): i for i, b in enumerate(batches)}
    parts = [
        HessianOperator(residual_fn, W, batches, kind, max_graphs=max_graphs,
                        shard=BatchShard(owns=lambda b, r=r: ids[id(b)] % 2 == r))
        for r in (0, 1)
    ]
    assert [len(p.local) for p in parts] == [3, 2]
    assert rel_err(sum(p.grad for p in parts), whole.grad) < 1e-12
    assert rel_err(sum(p(v) for p in parts), whole(v)) < 1e-12
    assert sum(p.loss for p in parts) == pytest.approx(whole.loss, rel=1e-12)
    held = [batches[-1]]
    assert float(window_loss(residual_fn, W, held, parts[1].shard)) == 0.0  # owns none of them: adds nothing
    assert float(window_loss(residual_fn, W, held, parts[0].shard)) == pytest.approx(float(window_loss(residual_fn, W, held)))


class FakeMemory:
    """A residual function that runs out of memory when more than ``limit`` batches'
    graphs are alive at once (tracked through weak references to its outputs); the
    block re-fit's tests use it too."""

    def __init__(self, residual_fn, limit):
        import weakref

        self.residual_fn, self.limit, self.alive, self.ooms = residual_fn, limit, weakref.WeakSet(), 0

    def __call__(self, w, batch):
        if len(self.alive) >= self.limit:
            self.ooms += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (fake)")
        out = self.residual_fn(w, batch)
        marker = out[0].view_as(out[0])  # any tensor the graph holds on to lives as long as it
        self.alive.add(out[0])
        return [marker, *out[1:]]


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
def test_out_of_memory_halves_the_graphs_held_and_gives_the_same_products(kind):
    residual_fn, W, batches = make_window(seed=5, n_batches=6)
    v = torch.randn_like(W)
    whole = HessianOperator(residual_fn, W, batches, kind)
    tight = FakeMemory(residual_fn, limit=2)
    op = HessianOperator(tight, W, batches, kind)
    assert tight.ooms >= 1 and op.graph_batches <= 2
    assert not op.keeps_graphs
    assert rel_err(op.grad, whole.grad) < 1e-12
    assert rel_err(op(v), whole(v)) < 1e-12
    assert op.loss == pytest.approx(whole.loss, rel=1e-12)


def test_out_of_memory_with_one_batch_per_graph_says_what_to_lower():
    residual_fn, W, batches = make_window(seed=6, n_batches=3)
    with pytest.raises(RuntimeError, match="lower batch_size or k_step"):
        HessianOperator(FakeMemory(residual_fn, limit=0), W, batches, "exact")
    with pytest.raises(ValueError, match="max_graphs"):
        HessianOperator(residual_fn, W, batches, "exact", max_graphs=0)


def test_newton_settles_on_the_graphs_that_fit():
    """A re-fit whose kept graphs do not fit runs to the same weights as one that fits."""
    residual_fn, W, batches = make_window(seed=7, n_batches=6)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(0), dtype=DT) > 0.4
    cfg = NewtonConfig(steps=3, hessian="gauss-newton", cg_rtol=1e-8)
    free = newton_refit(W, mask, residual_fn, batches[:5], batches[5:], cfg)
    tight = FakeMemory(residual_fn, limit=2)
    squeezed = newton_refit(W, mask, tight, batches[:5], batches[5:], cfg)
    assert free.graph_batches == 5 and squeezed.graph_batches <= 2
    assert tight.ooms == 1 == squeezed.memory_retries and free.memory_retries == 0  # later steps start from what fitted
    assert (squeezed.weight - free.weight).abs().max() < 1e-9  # summation order only


def test_operator_rejects_bad_arguments():
    residual_fn, W, batches = make_window()
    with pytest.raises(ValueError):
        HessianOperator(residual_fn, W, batches, "fisher")
    with pytest.raises(ValueError):
        HessianOperator(residual_fn, W, [], "exact")
    with pytest.raises(ValueError):
        HessianOperator(residual_fn, W, batches, "exact")(torch.zeros(3))


# 4. masked CG against torch.linalg.solve on the support


def spd_matrix(n, seed, shift=0.1):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=DT)
    return A @ A.T / n + shift * torch.eye(n, dtype=DT)


def test_masked_cg_matches_support_solve():
    shape = (6, 5)
    n = 30
    A = spd_matrix(n, seed=4)
    g = torch.Generator().manual_seed(5)
    b = torch.randn(shape, generator=g, dtype=DT)
    mask = torch.rand(shape, generator=g) > 0.4
    hvp = lambda v: (A @ v.reshape(-1)).reshape(shape)
    damping = 1e-3

    res = masked_cg(hvp, b, mask, damping=damping, rtol=1e-13, max_iter=200)

    S = mask.reshape(-1)
    ref = torch.linalg.solve(A[S][:, S] + damping * torch.eye(int(S.sum()), dtype=DT), b.reshape(-1)[S])
    assert res.converged and not res.negative_curvature
    assert res.relative_residual <= 1e-13
    assert rel_err(res.x.reshape(-1)[S], ref) < 1e-8
    assert bool((res.x[~mask] == 0).all())
    assert res.x.shape == shape and res.x.dtype == DT

    warm = masked_cg(hvp, b, mask, damping=damping, rtol=1e-8, max_iter=200, x0=res.x)
    assert warm.iterations == 0 and warm.converged
    assert torch.equal(warm.x, res.x)


def test_masked_cg_stops_at_rtol_and_max_iter():
    n = 40
    A = spd_matrix(n, seed=6, shift=1e-3)
    b = torch.randn(n, dtype=DT, generator=torch.Generator().manual_seed(7))
    mask = torch.ones(n, dtype=torch.bool)
    loose = masked_cg(lambda v: A @ v, b, mask, rtol=0.5, max_iter=100)
    assert loose.converged and loose.relative_residual <= 0.5
    assert float((b - A @ loose.x - 1e-4 * loose.x).norm() / b.norm()) == pytest.approx(
        loose.relative_residual, rel=1e-6
    )
    capped = masked_cg(lambda v: A @ v, b, mask, rtol=1e-14, max_iter=3)
    assert capped.iterations == 3 and not capped.converged
    zero = masked_cg(lambda v: A @ v, torch.zeros(n, dtype=DT), mask)
    assert zero.converged and zero.iterations == 0 and bool((zero.x == 0).all())


def test_preconditioned_cg_solves_the_same_system_in_fewer_products():
    """A badly scaled SPD system (feature scales over four decades, as LLM activations
    have): Jacobi-preconditioned CG reaches the same solution in far fewer products, and
    a diagonal system is solved in one."""
    n = 60
    g = torch.Generator().manual_seed(12)
    scales = torch.logspace(0, 2, n, dtype=DT)
    A = scales[:, None] * spd_matrix(n, seed=13, shift=0.5) * scales[None, :]
    b = torch.randn(n, dtype=DT, generator=g)
    mask = torch.rand(n, generator=g) > 0.3
    hvp = lambda v: A @ v
    plain = masked_cg(hvp, b, mask, damping=0.0, rtol=1e-10, max_iter=500)
    jacobi = masked_cg(hvp, b, mask, damping=0.0, rtol=1e-10, max_iter=500, preconditioner=A.diagonal().clone())
    assert plain.converged and jacobi.converged
    assert rel_err(jacobi.x, plain.x) < 1e-6
    assert jacobi.iterations * 3 <= plain.iterations
    assert bool((jacobi.x[~mask] == 0).all())
    D = torch.diag(scales**2)
    one = masked_cg(lambda v: D @ v, b, mask, damping=0.0, rtol=1e-12, preconditioner=scales**2)
    assert one.iterations == 1 and one.converged
    assert torch.allclose(one.x, torch.where(mask, b / scales**2, torch.zeros((), dtype=DT)))
    with pytest.raises(ValueError, match="positive"):
        masked_cg(hvp, b, mask, preconditioner=-torch.ones(n, dtype=DT))
    with pytest.raises(ValueError, match="shape"):
        masked_cg(hvp, b, mask, preconditioner=torch.ones(n + 1, dtype=DT))


def test_masked_cg_negative_curvature():
    A = torch.diag(torch.tensor([-1.0, 2.0, 3.0, 4.0], dtype=DT))
    mask = torch.tensor([True, True, False, True])
    b = torch.tensor([1.0, 0.0, 5.0, 0.0], dtype=DT)
    # first iteration: p = P b sees curvature -1 -> steepest descent P b returned
    res = masked_cg(lambda v: A @ v, b, mask, damping=0.0)
    assert res.negative_curvature and not res.converged and res.iterations == 1
    assert torch.equal(res.x, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=DT))
    # later iteration: a positive first direction, then negative curvature -> current iterate
    b2 = torch.tensor([0.3, 1.0, 0.0, 1.0], dtype=DT)
    res2 = masked_cg(lambda v: A @ v, b2, mask, damping=0.0, rtol=1e-12)
    assert res2.negative_curvature and res2.iterations >= 2
    assert float((res2.x * (A @ res2.x)).sum()) > 0 and res2.x[2] == 0


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
def test_gradient_batches_count_in_the_gradient_not_the_products(kind):
    """Sub-sampled Newton: loss and gradient are the mean over all batches, the products
    those of the curvature batches alone; sharded, the parts still add up."""
    residual_fn, W, batches = make_window(seed=5, n_batches=5)
    v = torch.randn_like(W)
    whole = HessianOperator(residual_fn, W, batches, kind)
    curvature = HessianOperator(residual_fn, W, batches[:2], kind)
    sub = HessianOperator(residual_fn, W, batches[:2], kind, gradient_batches=batches[2:])
    assert rel_err(sub(v), curvature(v)) < 1e-12
    assert rel_err(sub.grad, whole.grad) < 1e-12
    assert sub.loss == pytest.approx(whole.loss, rel=1e-12)
    ids = {id(b): i for i, b in enumerate(batches)}
    parts = [
        HessianOperator(residual_fn, W, batches[:2], kind, gradient_batches=batches[2:], max_graphs=1,
                        shard=BatchShard(owns=lambda b, r=r: ids[id(b)] % 2 == r))
        for r in (0, 1)
    ]
    assert rel_err(sum(p.grad for p in parts), whole.grad) < 1e-12
    assert rel_err(sum(p(v) for p in parts), curvature(v)) < 1e-12


def test_hessian_batches_take_turns_and_keep_newton_exact_on_quadratics():
    """On a least-squares window every batch has the same Hessian up to sampling, so a
    sub-sampled Newton step still descends; with identical batches it is the full step."""
    g = torch.Generator().manual_seed(11)
    X = torch.randn(40, 6, generator=g, dtype=DT)
    Y = torch.randn(40, 3, generator=g, dtype=DT)
    fn = lambda w, b: [b[0] @ w.T - b[1]]
    mask = torch.rand(3, 6, generator=g) > 0.4
    same = [(X, Y) for _ in range(4)]  # four batch objects, one Hessian
    train = [tuple(t.clone() for t in b) for b in same]
    cfg = NewtonConfig(steps=1, damping=0.0, cg_iters=100, cg_rtol=1e-12)
    full = newton_refit(torch.zeros(3, 6, dtype=DT), mask, fn, train, [(X, Y)], cfg)
    seen = []

    def spy(w, b):
        seen.append(next((i for i, t in enumerate(train) if t is b), -1))  # -1: held out
        return fn(w, b)

    sub = newton_refit(torch.zeros(3, 6, dtype=DT), mask, spy, train, [(X, Y)],
                       NewtonConfig(steps=1, damping=0.0, cg_iters=100, cg_rtol=1e-12, hessian_batches=2,
                                    keep_graphs=False))  # each product re-runs its batches' forward
    assert rel_err(sub.weight, full.weight) < 1e-9
    assert sub.heldout_loss_after < sub.heldout_loss_before
    assert set(seen) - {-1} == {0, 1, 2, 3}  # every batch in the gradient ...
    assert min(seen.count(0), seen.count(1)) > max(seen.count(2), seen.count(3)) + 2  # ... 0, 1 in products


def test_curvature_batches_take_turns_across_steps():
    """hessian_batches=2 of three distinct batches: step 0's products run on batches 0
    and 1, step 1's on batches 2 and 0 (each product re-runs its batches' forwards, as
    keep_graphs is off); every step's gradient still sees all three."""
    g = torch.Generator().manual_seed(14)
    X = torch.randn(90, 6, generator=g, dtype=DT)
    Y = X @ torch.randn(6, 3, generator=g, dtype=DT) + 0.1 * torch.randn(90, 3, generator=g, dtype=DT)
    train = [(X[i : i + 30], Y[i : i + 30]) for i in (0, 30)] + [(X[60:80], Y[60:80])]
    held = [(X[80:], Y[80:])]
    mask = torch.rand(3, 6, generator=g) > 0.4
    calls = []

    def spy(w, b):
        calls.append(next((i for i, t in enumerate(train) if t is b), -1))
        return [b[0] @ w.T - b[1]]

    cfg = NewtonConfig(steps=2, damping=1e-6, cg_iters=6, cg_rtol=1e-12, hessian_batches=2, keep_graphs=False)
    res = newton_refit(torch.zeros(3, 6, dtype=DT), mask, spy, train, held, cfg)
    assert res.steps_accepted == 2 and res.cg_iterations[0] >= 3 and res.cg_iterations[1] >= 3
    step0, step1 = res.cg_iterations
    # per batch: one gradient pass per step (2) + the loss after (1) + one forward per product of its steps
    assert calls.count(0) == 3 + step0 + step1
    assert calls.count(1) == 3 + step0 and calls.count(2) == 3 + step1


def test_training_loss_before_comes_from_the_first_operator_and_heldout_loss_from_the_caller():
    residual_fn, W, batches = make_window(seed=15, n_batches=4)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(16)) > 0.5
    train, held = batches[:3], batches[3:]
    cfg = NewtonConfig(steps=2, cg_iters=20)
    res = newton_refit(W, mask, residual_fn, train, held, cfg)
    start = W * mask
    assert res.train_loss_before == pytest.approx(float(window_loss(residual_fn, start, train)), rel=1e-12)
    assert res.heldout_loss_before == pytest.approx(float(window_loss(residual_fn, start, held)), rel=1e-12)
    seen = {"without": [], "given": []}

    def spy(key):
        def fn(w, b):
            seen[key].append(id(b))
            return residual_fn(w, b)
        return fn

    again = newton_refit(W, mask, spy("without"), train, held, cfg)
    given = newton_refit(W, mask, spy("given"), train, held, cfg, heldout_loss=res.heldout_loss_before)
    assert torch.equal(given.weight, res.weight) and torch.equal(again.weight, res.weight)
    assert seen["without"].count(id(held[0])) == seen["given"].count(id(held[0])) + 1  # no start forward
    assert seen["without"].count(id(train[0])) == 3  # first operator, second operator, the loss after: no extra
    lied = newton_refit(W, mask, residual_fn, train, held, cfg, heldout_loss=0.0)  # "already perfect"
    assert lied.stop_reason == "line_search_failed" and lied.steps_accepted == 0
    assert newton_refit(W, mask, residual_fn, train, held, NewtonConfig(steps=0)).train_loss_before == pytest.approx(
        res.train_loss_before, rel=1e-12)


# 5. K=0 SNOWS = per-row least squares on the support


def test_k0_newton_equals_rowwise_least_squares():
    g = torch.Generator().manual_seed(8)
    n, d_in, d_out = 200, 12, 6
    X = torch.randn(n, d_in, generator=g, dtype=DT) @ torch.randn(d_in, d_in, generator=g, dtype=DT)
    W_true = torch.randn(d_out, d_in, generator=g, dtype=DT)
    Y = X @ W_true.T + 0.1 * torch.randn(n, d_out, generator=g, dtype=DT)
    # 2:4 along the input dimension, chosen by magnitude
    groups = W_true.abs().reshape(d_out, -1, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).reshape(d_out, d_in)
    train = [(X[i : i + 40], Y[i : i + 40]) for i in range(0, 160, 40)]
    heldout = [(X[160:], Y[160:])]
    fn = lambda w, b: [b[0] @ w.T - b[1]]
    cfg = NewtonConfig(steps=2, damping=0.0, cg_iters=200, cg_rtol=1e-12)
    w0 = W_true.clone()

    res = newton_refit(w0, mask, fn, train, heldout, cfg)

    X_tr, Y_tr = X[:160], Y[:160]
    ref = torch.zeros_like(W_true)
    for j in range(d_out):
        S = mask[j]
        ref[j, S] = torch.linalg.lstsq(X_tr[:, S], Y_tr[:, j : j + 1]).solution[:, 0]
    assert res.steps_accepted >= 1
    assert rel_err(res.weight, ref) < 1e-4
    assert bool((res.weight[~mask] == 0).all())
    assert torch.equal(w0, W_true)  # caller's tensor untouched
    assert not res.weight.requires_grad
    assert res.train_loss_after < res.train_loss_before
    assert res.history[0]["step_size"] == 1.0  # a full Newton step on a quadratic


# 6. held-out loss never increases; a forced line-search failure changes nothing


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
def test_heldout_loss_never_increases(kind):
    residual_fn, W, batches = make_window(seed=9, n_batches=5, n=16)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(10)) > 0.5
    cfg = NewtonConfig(steps=4, hessian=kind, batches_per_step=2, cg_iters=20)
    res = newton_refit(W, mask, residual_fn, batches[:4], batches[4:], cfg)
    assert res.steps_accepted >= 1
    accepted = [h for h in res.history if h["accepted"]]
    losses = [res.heldout_loss_before] + [h["heldout_loss_after"] for h in accepted]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert res.heldout_loss_after <= res.heldout_loss_before
    assert res.heldout_loss_after == pytest.approx(
        window_loss(residual_fn, res.weight, batches[4:]).item(), rel=1e-12
    )
    for h in res.history:
        assert set(h) == {
            "step", "train_loss", "heldout_loss_before", "heldout_loss_after",
            "step_size", "accepted", "cg_iterations", "cg_relative_residual", "cg_converged",
        }
    assert res.cg_iterations == [h["cg_iterations"] for h in res.history]
    assert bool((res.weight[~mask] == 0).all())


@pytest.mark.parametrize("tolerance", [0.0, 0.05, 0.5, 0.999])
def test_min_decrease_stops_once_a_step_gains_too_little(tolerance):
    residual_fn, W, batches = make_window(seed=9, n_batches=5, n=16)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(10)) > 0.5
    cfg = NewtonConfig(steps=6, batches_per_step=2, cg_iters=3, min_decrease=tolerance)
    res = newton_refit(W, mask, residual_fn, batches[:4], batches[4:], cfg)
    gains = [(h["heldout_loss_before"] - h["heldout_loss_after"]) / h["heldout_loss_before"] for h in res.history]
    # every step but the last gained more than the tolerance; the last one ended the loop
    assert all(g > tolerance for g in gains[:-1])
    if res.stop_reason == "small_decrease":
        assert 0 <= gains[-1] <= tolerance and res.history[-1]["accepted"]
    else:
        assert res.stop_reason in ("steps", "line_search_failed")
    # the steps taken are those of the run without a tolerance, cut where it says
    free = newton_refit(W, mask, residual_fn, batches[:4], batches[4:], NewtonConfig(steps=6, batches_per_step=2,
                                                                                     cg_iters=3))
    assert res.history == free.history[: len(res.history)]
    if tolerance == 0.0:
        assert res.stop_reason != "small_decrease" and len(res.history) == len(free.history)
    if tolerance == 0.999:
        assert len(res.history) == 1


def test_failed_line_search_keeps_weights():
    residual_fn, W, batches = make_window(seed=11, n_batches=3, n=16)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(12)) > 0.5
    w_start = W * mask
    X, _, _ = batches[-1]
    # held-out targets are the outputs of w0*mask itself: any move raises the held-out loss
    with torch.no_grad():
        h = X @ w_start.T
        _, out = residual_fn(w_start, (X, h, torch.zeros(16, D_OUT, dtype=DT)))  # = gelu(h) V^T
    heldout = [(X, h, out)]
    assert window_loss(residual_fn, w_start, heldout).item() == 0.0
    res = newton_refit(W, mask, residual_fn, batches[:2], heldout, NewtonConfig(steps=3))
    assert res.steps_accepted == 0 and res.steps_rejected == 1
    assert res.line_search_failed and res.stop_reason == "line_search_failed"
    assert torch.equal(res.weight, w_start)
    assert res.heldout_loss_after == res.heldout_loss_before == 0.0
    assert res.train_loss_after == res.train_loss_before
    assert res.history[0]["accepted"] is False and res.history[0]["step_size"] == 0.0


def test_zero_gradient_stops_without_failure():
    g = torch.Generator().manual_seed(13)
    X = torch.randn(10, D_IN, generator=g, dtype=DT)
    W = torch.randn(D_OUT, D_IN, generator=g, dtype=DT)
    fn = lambda w, b: [b[0] @ w.T - b[1]]
    train = [(X, X @ W.T)]
    res = newton_refit(W, torch.ones_like(W, dtype=torch.bool), fn, train, [(X[:5], X[:5] @ W.T)])
    assert res.stop_reason == "zero_gradient" and not res.line_search_failed
    assert torch.equal(res.weight, W) and res.history == []


def test_exact_hessian_flags_negative_curvature_in_newton():
    # loss = mean((w^2 - 1)^2) has negative curvature at w = 0.1 (3 w^2 - 1 < 0)
    fn = lambda w, b: [w * w - b]
    train, heldout = [torch.ones(4, dtype=DT)], [torch.ones(4, dtype=DT)]
    w0 = torch.full((4,), 0.1, dtype=DT)
    mask = torch.ones(4, dtype=torch.bool)
    res = newton_refit(w0, mask, fn, train, heldout, NewtonConfig(hessian="exact", steps=1))
    assert res.negative_curvature and res.steps_accepted == 1
    assert res.heldout_loss_after < res.heldout_loss_before


# 7. bad inputs


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(steps=-1),
        dict(steps=1.5),
        dict(hessian="fisher"),
        dict(cg_iters=0),
        dict(cg_rtol=-0.1),
        dict(cg_rtol=1.0),
        dict(damping=-1e-3),
        dict(damping=float("nan")),
        dict(armijo_c=0.0),
        dict(armijo_c=1.0),
        dict(max_backtracks=-1),
        dict(backtrack_factor=1.0),
        dict(backtrack_factor=0.0),
        dict(batches_per_step=0),
        dict(batches_per_step=True),
        dict(hessian_batches=0),
        dict(hessian_batches=1.5),
        dict(min_decrease=-0.1),
        dict(min_decrease=1.5),
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match="NewtonConfig"):
        NewtonConfig(**kwargs)


def test_bad_batches_raise():
    residual_fn, W, batches = make_window()
    mask = torch.ones_like(W, dtype=torch.bool)
    with pytest.raises(ValueError, match="overlap"):
        newton_refit(W, mask, residual_fn, batches, batches[-1:])
    with pytest.raises(ValueError, match="heldout_batches is empty"):
        newton_refit(W, mask, residual_fn, batches, [])
    with pytest.raises(ValueError, match="train_batches is empty"):
        newton_refit(W, mask, residual_fn, [], batches)
    with pytest.raises(ValueError, match="mask"):
        newton_refit(W, mask.double(), residual_fn, batches[:2], batches[2:])


def test_lstsq_start_solves_in_float32_and_falls_back_to_float64_when_cholesky_fails(monkeypatch):
    from snows_hf.solver import lsq
    from snows_hf.solver.lsq import masked_lstsq

    g = torch.Generator().manual_seed(9)
    x = torch.randn(256, 8, generator=g, dtype=DT)
    x[:, 1] = x[:, 0] + 1e-7 * x[:, 1]  # nearly collinear: float32 Cholesky fails without damping, float64 does not
    solved_in, solve_rows = [], lsq._solve_rows
    monkeypatch.setattr(lsq, "_solve_rows", lambda *a: solved_in.append(a[-1]) or solve_rows(*a))
    weight = torch.randn(3, 8, generator=g, dtype=DT)
    mask = torch.ones(3, 8, dtype=torch.bool)
    gram = x.T @ x
    exact = masked_lstsq(gram, gram, weight, mask, damping=0.0)
    assert exact.dtype == DT and torch.allclose(x @ exact.T, x @ weight.T, atol=1e-6)  # the fit, not the weights
    solved_in.clear()
    fallback = masked_lstsq(gram.float(), gram.float(), weight.float(), mask, damping=0.0)
    assert solved_in == [torch.float32, torch.float64]
    assert fallback.dtype == torch.float32 and torch.isfinite(fallback).all()
    fit = lambda w: float((x.float() @ w.T - x.float() @ weight.float().T).pow(2).mean())  # noqa: E731
    assert fit(fallback) < 1e-3 * fit(torch.zeros_like(fallback))
    with pytest.raises(ValueError, match="raise the damping"):  # singular even in float64
        masked_lstsq(torch.zeros(8, 8), torch.zeros(8, 8), weight.float(), mask, damping=0.0)
    well = torch.randn(512, 8, generator=g)
    solved_in.clear()
    assert torch.allclose(masked_lstsq(well.T @ well, well.T @ well, weight.float(), mask), weight.float(), atol=1e-3)
    assert solved_in == [torch.float32]


def _row_lstsq(x: torch.Tensor, x_target: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference: each row's least squares on its support by ``torch.linalg.lstsq``."""
    out = torch.zeros_like(weight)
    for j in range(weight.shape[0]):
        support = mask[j]
        if support.any():
            out[j, support] = torch.linalg.lstsq(x[:, support], x_target @ weight[j]).solution
    return out


@pytest.mark.parametrize("case", ["unequal supports", "empty and full rows", "N:M", "cross differs from gram"])
def test_masked_lstsq_matches_each_rows_own_least_squares_exact_and_by_cg(case):
    """Supports padded to the largest one (exact) and all rows by conjugate gradients give
    each row's own least-squares fit on its support."""
    from snows_hf.solver.lsq import exact_flops, masked_lstsq

    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 12, generator=g, dtype=DT) * torch.logspace(0, 2, 12, dtype=DT)  # features on scales 1..100
    x_target = x + 0.1 * torch.randn(300, 12, generator=g, dtype=DT) if case == "cross differs from gram" else x
    weight = torch.randn(5, 12, generator=g, dtype=DT)
    mask = torch.rand(5, 12, generator=g) > 0.5
    if case == "empty and full rows":
        mask[0], mask[1] = False, True
    if case == "N:M":
        mask = torch.zeros(5, 12, dtype=torch.bool)
        mask.view(5, 3, 4)[..., :2] = True
    ref = _row_lstsq(x, x_target, weight, mask)
    gram, cross = x.T @ x, x.T @ x_target
    exact = masked_lstsq(gram, cross, weight, mask, damping=0.0)
    assert torch.allclose(exact, ref, atol=1e-8) and not exact[~mask].any()
    assert exact_flops(mask) > 0
    by_cg = masked_lstsq(gram, cross, weight, mask, damping=0.0, max_exact_flops=0, cg_tol=1e-13)
    assert torch.allclose(by_cg, ref, atol=1e-7) and not by_cg[~mask].any()


def test_masked_lstsq_by_cg_starts_where_told_and_stops_at_its_iteration_cap():
    """From the exact answer CG has nothing to do; one iteration from elsewhere leaves a
    residual; the iteration cap, not the tolerance, ends it."""
    from snows_hf.solver.lsq import masked_lstsq

    g = torch.Generator().manual_seed(4)
    x = torch.randn(400, 16, generator=g, dtype=DT) * torch.logspace(0, 1, 16, dtype=DT)
    weight, mask = torch.randn(6, 16, generator=g, dtype=DT), torch.rand(6, 16, generator=g) > 0.3
    gram = x.T @ x
    exact = masked_lstsq(gram, gram, weight, mask, damping=0.0)
    fit = lambda w: float((x @ w.T - x @ weight.T).pow(2).sum())  # noqa: E731
    from_exact = masked_lstsq(gram, gram, weight, mask, damping=0.0, max_exact_flops=0, start=exact, cg_iterations=0)
    assert torch.equal(from_exact, exact)
    one = masked_lstsq(gram, gram, weight, mask, damping=0.0, max_exact_flops=0, cg_iterations=1, cg_tol=0.0)
    many = masked_lstsq(gram, gram, weight, mask, damping=0.0, max_exact_flops=0, cg_iterations=200, cg_tol=0.0)
    assert fit(exact) < fit(one) < fit(weight * mask) and abs(fit(many) - fit(exact)) <= 1e-9 * fit(weight * mask)
    with pytest.raises(ValueError, match="start must have"):
        masked_lstsq(gram, gram, weight, mask, start=weight[:2])
