"""Measurements on trained parameters: sharpness, Hessian curvature, interpolation, landscapes.

    loss_fn      f(θ) = training loss over a fixed dataset (float32, inference mode, sharded),
                 its gradient and Hessian-vector products, from a Run's checkpoint
    sharpness    Keskar et al. 2017 ε-sharpness (full space and random subspace, L-BFGS-B)
    hessian      Lanczos top eigenvalues, Hutchinson / Hutch++ trace, SLQ eigenvalue density
    landscape    θ(α) interpolation (Keskar Fig. 3), filter-normalised 1-D/2-D landscapes
    analysis     all of the above on run directories, as JSON-ready summaries
    nqm          the noisy quadratic model solved exactly: expected loss, steps to a target,
                 S(B) and B_crit, noise scales in closed form (numpy only)
    cli          `mbx analyze sharpness|interpolate|landscape`
"""
