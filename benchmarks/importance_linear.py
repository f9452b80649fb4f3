"""Magnitude vs Hessian-scaled importance in least-squares regression (the weight-importance
paper's setting, in miniature).

Inputs ``x ~ N(0, S)`` with variances ``v`` spread over four decades; the true
weights are ``beta_j = c_j / sqrt(v_j)`` with ``c ~ N(0, 1)``, so every input carries the
same expected signal and the *important* weights (on high-variance inputs) are the
*small* ones. Ordinary least squares on a training sample gives ``beta_hat``, which is
pruned at several sparsities by each mask selector of snows_hf, then optionally re-fitted
on its support (the closed-form K=0 re-fit SNOWS starts from). Printed: test risk on the
population, as excess risk relative to predicting zero (``(b - beta)^T S (b - beta) /
beta^T S beta``; 0 is perfect, 1 is useless). Three input laws: independent, correlated
(where the re-fit and SparseGPT's use of the full ``H`` have something to work with), and
an isotropic control in which the selectors should agree.

With one output, Wanda's ``|W| * ||x_j||`` ranks exactly like ``W^2 * H_jj``, so it is
not a separate row here.

    python benchmarks/importance_linear.py [--dim 256] [--train 4096] [--seed 0]   # writes benchmarks/results/importance_linear.json
"""

from __future__ import annotations

import argparse

import torch

import record
from snows_hf.masks import apply_selector, parse_sparsity
from snows_hf.solver.lsq import masked_lstsq

SPARSITIES = ("0.5", "0.7", "0.8", "0.9", "0.95")
SELECTORS = ("magnitude", "hessian", "sparsegpt")
SCENARIOS = (  # name, title, log10 spread of the input variances, AR(1) correlation
    ("independent", "anisotropic inputs: variances over 4 decades, important weights small", 4.0, 0.0),
    ("correlated", "anisotropic and correlated: as above, neighbouring inputs AR(1) rho=0.6", 4.0, 0.6),
    ("isotropic", "isotropic control: all variances 1, independent", 0.0, 0.0),
)


def problem(dim: int, train: int, spread: float, rho: float, noise: float, seed: int):
    """Population covariance ``S = D^1/2 R D^1/2`` (``R``: AR(1) with ``rho``), true weights,
    a training sample and its least-squares fit."""
    g = torch.Generator().manual_seed(seed)
    variances = torch.logspace(-spread / 2, spread / 2, dim, dtype=torch.float64)[torch.randperm(dim, generator=g)]
    lags = torch.arange(dim, dtype=torch.float64)
    corr = rho ** (lags[:, None] - lags[None, :]).abs()
    cov = variances.sqrt()[:, None] * corr * variances.sqrt()[None, :]
    beta = torch.randn(dim, generator=g, dtype=torch.float64) / variances.sqrt()
    x = torch.randn(train, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    y = x @ beta + noise * torch.randn(train, generator=g, dtype=torch.float64)
    beta_hat = torch.linalg.lstsq(x, y).solution
    return cov, beta, x, beta_hat


def risk(b: torch.Tensor, beta: torch.Tensor, cov: torch.Tensor) -> float:
    """Excess population risk relative to the zero predictor."""
    d = b - beta
    return float(d @ cov @ d / (beta @ cov @ beta))


def run(dim: int, train: int, spread: float, rho: float, noise: float, seed: int) -> dict:
    variances, beta, x, beta_hat = problem(dim, train, spread, rho, noise, seed)
    gram = x.T @ x
    stats = {"input_sq": gram.diagonal().clone(), "gram": gram}
    w = beta_hat[None, :]
    table = {"dense (OLS)": {s: risk(beta_hat, beta, variances) for s in SPARSITIES}}
    for selector in SELECTORS:
        plain, refit = {}, {}
        for spec in SPARSITIES:
            pruned, mask = apply_selector(selector, w, parse_sparsity(spec), stats)
            plain[spec] = risk(pruned[0], beta, variances)
            refit[spec] = risk(masked_lstsq(gram, gram, w, mask, damping=1e-10)[0], beta, variances)
        table[f"{selector}"] = plain
        table[f"{selector} + re-fit"] = refit
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--train", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    record.out_option(parser, "importance_linear")
    args = parser.parse_args()
    scenarios = []
    for name, title, spread, rho in SCENARIOS:
        table = run(args.dim, args.train, spread, rho, args.noise, args.seed)
        scenarios.append({"inputs": name, "title": title, "spread_decades": spread, "rho": rho, "risk": table})
        print(f"\n{title} (d={args.dim}, n={args.train}, noise {args.noise}); relative excess test risk")
        head = f"{'method':<22}" + "".join(f"{'sparsity ' + s:>15}" for s in SPARSITIES)
        print(head)
        print("-" * len(head))
        for name, row in table.items():
            print(f"{name:<22}" + "".join(f"{row[s]:>15.4f}" for s in SPARSITIES))
    record.write(args.out, {"settings": record.settings(args), "sparsities": SPARSITIES, "scenarios": scenarios})
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
