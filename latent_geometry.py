"""Numbers of trajectories in latent space: T-PHATE, speed and shape statistics, robust outliers, persistent
homology. No torch; tphate and ripser are imported by the functions that need them (they load slowly).
"""

import warnings

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

OUTLIER_COLUMNS = ("trajectory_length", "start_end_distance", "mean_speed", "max_speed")


# ----------------------------------------------------------------------------- geometry

def reduce_dims(z: np.ndarray, n_components: int = 2) -> np.ndarray:
    """PCA of a trajectory (n, C) to at most n_components (and at most n - 1) dimensions."""
    k = max(1, min(n_components, z.shape[0] - 1, z.shape[1]))
    return PCA(n_components=k, svd_solver="full").fit_transform(z)


def tphate_embedding(z: np.ndarray, n_pca: int = 30, knn: int = 5, seed: int = 0) -> tuple[np.ndarray, str, int | None]:
    """2-D T-PHATE embedding of one trajectory (n, C) -> ((n, 2), method, autocorrelation dropoff in frames).

    T-PHATE gets the latents themselves: its `n_pca` reduces them for the kNN graph only, while its
    autocorrelation view averages the autocorrelation of every input column with equal weight, so a
    pre-reduced copy (whose many low-variance components decorrelate at once) would flatten that view.
    method is "tphate"; for trajectories too short for a kNN graph (< 2 * knn points) it is "pca" (the first
    two principal components), and "constant" when the trajectory does not move at all (embedding all zeros);
    the dropoff is None for both.
    """
    n = z.shape[0]
    if n < 2 or np.allclose(z, z[0]):
        return np.zeros((n, 2)), "constant", None
    if n < 2 * knn:
        reduced = reduce_dims(z, 2)
        out = np.zeros((n, 2))
        out[:, :reduced.shape[1]] = reduced
        return out, "pca", None
    import tphate  # imported here: it takes seconds and only this function needs it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        operator = tphate.TPHATE(n_components=2, knn=knn, n_pca=n_pca, n_landmark=None, verbose=0,
                                 random_state=seed, n_jobs=1)
        embedding = operator.fit_transform(z)
    return np.asarray(embedding, dtype=np.float64), "tphate", int(operator.dropoff)


def speed_curve(z: np.ndarray) -> np.ndarray:
    """Euclidean step length ||z(t+1) - z(t)|| of a trajectory (n, C) -> (n - 1,)."""
    return np.linalg.norm(np.diff(z, axis=0), axis=1)


def trajectory_stats(z: np.ndarray) -> dict:
    """Length, start-end distance, straightness and speed statistics of a trajectory (n, C)."""
    speeds = speed_curve(z)
    length = float(speeds.sum())
    start_end = float(np.linalg.norm(z[-1] - z[0]))
    return {
        "n_frames": int(z.shape[0]),
        "trajectory_length": length,
        "start_end_distance": start_end,
        "straightness": start_end / length if length > 0 else float("nan"),
        "mean_speed": float(speeds.mean()) if len(speeds) else float("nan"),
        "median_speed": float(np.median(speeds)) if len(speeds) else float("nan"),
        "max_speed": float(speeds.max()) if len(speeds) else float("nan"),
    }


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-score 0.6745 (x - median) / MAD (Iglewicz and Hoaglin); MAD 0 falls back to 1.2533 x mean AD."""
    values = np.asarray(values, dtype=np.float64)
    median = np.nanmedian(values)
    deviation = np.abs(values - median)
    mad = np.nanmedian(deviation)
    if mad > 0:
        return 0.6745 * (values - median) / mad
    mean_ad = np.nanmean(deviation)
    if mean_ad > 0:
        return (values - median) / (1.253314 * mean_ad)
    return np.zeros_like(values)


def flag_outliers(table: pd.DataFrame, columns=OUTLIER_COLUMNS, threshold: float = 3.5) -> pd.DataFrame:
    """Add robust_z_<col>, max_abs_robust_z and is_outlier (any |robust z| > threshold) to a per-embryo table."""
    out = table.copy()
    scores = []
    for column in columns:
        out[f"robust_z_{column}"] = robust_z(out[column].to_numpy())
        scores.append(np.abs(out[f"robust_z_{column}"].to_numpy()))
    out["max_abs_robust_z"] = np.nanmax(np.stack(scores, axis=1), axis=1) if len(out) else []
    out["is_outlier"] = out["max_abs_robust_z"] > threshold
    return out


# ----------------------------------------------------------------------------- topology

def persistence_diagrams(z: np.ndarray, maxdim: int = 1, max_points: int = 500) -> list[np.ndarray]:
    """ripser H0..H<maxdim> diagrams of a point cloud (n, C); above max_points ripser's greedy (furthest-point,
    deterministic) subsample of max_points points is used."""
    import ripser  # imported here: only the topology step needs it

    n_perm = max_points if z.shape[0] > max_points else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "more columns than rows": expected for short trajectories
        dgms = ripser.ripser(z, maxdim=maxdim, n_perm=n_perm)["dgms"]
    return [np.asarray(d, dtype=np.float64) for d in dgms]


def finite_lifetimes(diagram: np.ndarray) -> np.ndarray:
    finite = diagram[np.isfinite(diagram[:, 1])] if len(diagram) else diagram.reshape(0, 2)
    return finite[:, 1] - finite[:, 0]


def total_persistence(diagram: np.ndarray) -> float:
    """Sum of finite bar lengths (death - birth); the infinite H0 bar is left out."""
    return float(finite_lifetimes(diagram).sum())


def persistence_entropy(diagram: np.ndarray) -> float:
    """Shannon entropy -sum p log p of finite bar lengths normalised to sum 1 (0 for <= 1 bar)."""
    lifetimes = finite_lifetimes(diagram)
    lifetimes = lifetimes[lifetimes > 0]
    if len(lifetimes) < 2:
        return 0.0
    p = lifetimes / lifetimes.sum()
    return float(-(p * np.log(p)).sum())


def persistence_summary(dgms: list[np.ndarray]) -> dict:
    """Total persistence and persistence entropy of H0 and H1, number of H1 bars and the longest finite one."""
    h1_life = finite_lifetimes(dgms[1])
    return {"h0_total_persistence": total_persistence(dgms[0]), "h1_total_persistence": total_persistence(dgms[1]),
            "h0_persistence_entropy": persistence_entropy(dgms[0]),
            "h1_persistence_entropy": persistence_entropy(dgms[1]),
            "h1_n_bars": int(len(dgms[1])), "h1_max_persistence": float(h1_life.max()) if len(h1_life) else 0.0}


def betti_curve(diagram: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Number of bars alive (birth <= r < death) at each radius."""
    if len(diagram) == 0:
        return np.zeros(len(radii), dtype=np.int64)
    birth, death = diagram[:, 0][:, None], diagram[:, 1][:, None]
    return ((birth <= radii[None]) & (radii[None] < death)).sum(axis=0)


def population_plane(trajectories: list[dict], max_points: int = 20000, seed: int = 0) -> tuple[list, list[float]]:
    """Every trajectory projected (n, 2) on one PCA plane fitted on (up to max_points of) all frames, and the
    plane's explained variance ratios."""
    all_z = np.concatenate([t["z"] for t in trajectories])
    rows = np.random.default_rng(seed).choice(len(all_z), size=min(max_points, len(all_z)), replace=False)
    pca = PCA(n_components=min(2, all_z.shape[1]), svd_solver="full").fit(all_z[rows])
    planes = [pca.transform(t["z"]) for t in trajectories]
    planes = [np.c_[xy, np.zeros(len(xy))] if xy.shape[1] == 1 else xy for xy in planes]
    return planes, [float(r) for r in pca.explained_variance_ratio_]
