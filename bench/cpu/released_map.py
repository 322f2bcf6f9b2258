"""The released DRCL evaluator's algorithm, as the speed baseline (benchmarks only).

fx_calc_map_label (single-label): scipy's pairwise cosine distances, an argsort
per query, and a Python loop over the ranked gallery. fx_calc_map_multilabel_k
(multi-label): the same distances and argsort, then numpy per query.
Two changes, so that its MAP can be compared with ours: the argsort is stable
(ties by gallery index, the reference's rule; the released quicksort orders
ties arbitrarily), and "all" walks the gallery (the released code walks as many
items as there are queries, the same number in these benchmarks).
"""
from __future__ import annotations

import numpy as np
import scipy.spatial.distance


def released_map(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                 gallery_labels: np.ndarray, k: int | None = None) -> float:
    dist = scipy.spatial.distance.cdist(query, gallery, "cosine")
    order = dist.argsort(kind="stable")
    k = gallery.shape[0] if k is None else k
    res = []
    if query_labels.ndim == 1:
        for i in range(len(query)):
            p, r = 0.0, 0.0
            for j in range(k):
                if query_labels[i] == gallery_labels[order[i, j]]:
                    r += 1
                    p += r / (j + 1)
            res.append(p / r if r > 0 else 0.0)
    else:
        for i in range(len(query)):
            tmp_label = np.dot(gallery_labels[order[i, :k]], query_labels[i]) > 0
            if tmp_label.sum() > 0:
                prec = tmp_label.cumsum() / np.arange(1.0, 1 + tmp_label.shape[0])
                res.append(np.dot(tmp_label, prec) / float(tmp_label.sum()))
    return float(np.mean(res))
