"""Quality diversity: archive semantics, CVT lookup, emitters' rules, MapElites resume, errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optforge.search import Candidates
from optforge.search.qd import (
    CMAES,
    AddStatus,
    CVTArchive,
    EvolutionStrategyEmitter,
    GaussianEmitter,
    GridArchive,
    IsoLineEmitter,
    MapElites,
    archive_heatmap,
    kmeans_centroids,
    sphere,
    sphere_one,
)

NEW, IMPROVE, NOT_ADDED = AddStatus.NEW, AddStatus.IMPROVE_EXISTING, AddStatus.NOT_ADDED


def grid(dims=(4, 4), solution_dim=3, **kwargs) -> GridArchive:
    return GridArchive(
        solution_dim=solution_dim, dims=dims, ranges=[(0.0, 1.0)] * len(dims), **kwargs
    )


def sequential_reference(archive: GridArchive, sol, obj, meas):
    """Plain one-by-one MAP-Elites insertion (learning_rate = 1) on copies of the storage."""
    occupied = archive._occupied.copy()
    thresholds = archive._thresholds.copy()
    objectives = archive._objectives.copy()
    solutions = archive._solutions.copy()
    base = 0.0 if archive.threshold_min == -math.inf else archive.threshold_min
    statuses, values = [], []
    for x, f, b in zip(sol, obj, meas):
        c = archive.index_of_single(b)
        if f > thresholds[c]:
            statuses.append(IMPROVE if occupied[c] else NEW)
            values.append(f - (thresholds[c] if occupied[c] else base))
            occupied[c], thresholds[c], objectives[c], solutions[c] = True, f, f, x
        else:
            statuses.append(NOT_ADDED)
            values.append(f - thresholds[c])
    return occupied, objectives, solutions, np.array(statuses), np.array(values)


batches = st.integers(min_value=0, max_value=40).flatmap(
    lambda n: st.tuples(
        # Small integer objectives make ties frequent: the first of equal maxima must win.
        st.lists(st.integers(-3, 3), min_size=n, max_size=n),
        st.lists(st.tuples(st.floats(-0.2, 1.2), st.floats(-0.2, 1.2)), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(first=batches, second=batches)
def test_batch_insert_equals_sequential_insert(first, second):
    # A finite threshold_min always takes pyribs' batch threshold rule (tested against pyribs
    # below); the sequential equivalence is the plain archive's.
    threshold_min = -math.inf
    archive = grid(dims=(3, 2), threshold_min=threshold_min)
    for step, (objs, meas) in enumerate((first, second)):
        n = len(objs)
        obj = np.array(objs, dtype=float)
        mea = np.array(meas, dtype=float).reshape(n, 2)
        sol = np.arange(n * 3, dtype=float).reshape(n, 3) + 1000 * step  # rows are traceable
        occ, objectives, solutions, status, value = sequential_reference(archive, sol, obj, mea)
        cells = archive.index_of(mea) if n else np.zeros(0, dtype=np.int64)
        t0, occ0 = archive._thresholds[cells], archive._occupied[cells]
        result = archive.add(sol, obj, mea)
        # pyribs' batch feedback: each row against the archive at the start of the batch.
        b_new = (obj > t0) & ~occ0
        np.testing.assert_array_equal(
            result.batch_status, np.where(obj > t0, np.where(b_new, 2, 1), 0)
        )
        base = 0.0 if threshold_min == -math.inf else threshold_min
        np.testing.assert_allclose(result.batch_value, obj - np.where(b_new, base, t0))
        np.testing.assert_array_equal(result.status, status)
        np.testing.assert_allclose(result.value, value)
        np.testing.assert_array_equal(archive._occupied, occ)
        np.testing.assert_array_equal(archive._objectives[occ], objectives[occ])
        np.testing.assert_array_equal(archive._solutions[occ], solutions[occ])


def test_statuses_and_values_by_hand():
    archive = grid(dims=(2,), solution_dim=1)
    # Rows 0, 1, 2 go to cell 0; row 3 to cell 1.
    res = archive.add(
        [[0.0], [1.0], [2.0], [3.0]], [5.0, 7.0, 6.0, -2.0], [[0.1], [0.2], [0.3], [0.9]]
    )
    assert res.status.tolist() == [NEW, IMPROVE, NOT_ADDED, NEW]
    np.testing.assert_allclose(res.value, [5.0, 2.0, -1.0, -2.0])
    assert res.index.tolist() == [0, 0, 0, 1]
    assert archive.best_elite["objective"] == 7.0 and archive.best_elite["solution"][0] == 1.0
    res = archive.add([[9.0]], [7.0], [[0.0]])  # a tie does not replace the elite
    assert res.status.tolist() == [NOT_ADDED] and res.value.tolist() == [0.0]


def test_stats_by_hand_with_offset():
    archive = grid(dims=(2, 2), solution_dim=2, qd_score_offset=-10.0)
    empty = archive.stats
    assert empty.num_elites == 0 and empty.qd_score == 0.0 and math.isnan(empty.obj_max)
    archive.add(np.zeros((3, 2)), [1.0, 4.0, -3.0], [[0.1, 0.1], [0.9, 0.9], [0.1, 0.9]])
    s = archive.stats
    # pyribs: qd_score = sum(objective - offset) = (1 + 10) + (4 + 10) + (-3 + 10).
    assert s.qd_score == pytest.approx(32.0)
    assert s.norm_qd_score == pytest.approx(8.0)
    assert s.coverage == pytest.approx(0.75) and s.num_elites == 3
    assert s.obj_max == 4.0 and s.obj_mean == pytest.approx(2.0 / 3.0)


def test_qd_score_is_order_independent():
    rng = np.random.default_rng(1)
    sol, obj, meas = rng.normal(size=(300, 3)), rng.normal(size=300), rng.uniform(size=(300, 2))
    a, b = grid(dims=(5, 5)), grid(dims=(5, 5))
    a.add(sol, obj, meas)
    perm = rng.permutation(300)
    b.add(sol[perm], obj[perm], meas[perm])
    assert a.stats == b.stats
    np.testing.assert_array_equal(a.elites()["solution"], b.elites()["solution"])


def test_soft_archive_threshold_closed_form():
    alpha, tmin = 0.1, 0.0
    archive = grid(dims=(2,), solution_dim=1, learning_rate=alpha, threshold_min=tmin)
    res = archive.add(
        [[0.0], [1.0], [2.0], [3.0]], [3.0, 5.0, -1.0, 2.0], [[0.1], [0.2], [0.3], [0.9]]
    )
    # Statuses compare with the threshold at the start of the batch (pyribs' batch rule).
    assert res.status.tolist() == [NEW, NEW, NOT_ADDED, NEW]
    np.testing.assert_allclose(res.value, [3.0, 5.0, -1.0, 2.0])
    k, s = 2, 8.0
    t0 = (1 - alpha) ** k * tmin + (s / k) * (1 - (1 - alpha) ** k)
    t1 = (1 - alpha) * tmin + 2.0 * alpha
    np.testing.assert_allclose(archive._thresholds, [t0, t1])
    assert archive._objectives[0] == 5.0  # the best accepted row becomes the elite
    # A lower objective above the threshold replaces the elite (a soft archive can lose its best).
    res = archive.add([[7.0]], [t0 + 0.5], [[0.1]])
    assert res.status.tolist() == [IMPROVE] and archive._objectives[0] == t0 + 0.5
    np.testing.assert_allclose(archive._thresholds[0], (1 - alpha) * t0 + alpha * (t0 + 0.5))


def test_grid_index_of_matches_pyribs_and_clips():
    ribs = pytest.importorskip("ribs.archives")
    ours = GridArchive(solution_dim=2, dims=(7, 5), ranges=[(-2.0, 3.0), (0.0, 1.0)])
    theirs = ribs.GridArchive(solution_dim=2, dims=(7, 5), ranges=[(-2.0, 3.0), (0.0, 1.0)])
    rng = np.random.default_rng(0)
    meas = np.concatenate(
        [
            rng.uniform([-3, -0.5], [4, 1.5], size=(2000, 2)),
            np.stack(np.meshgrid(np.linspace(-2, 3, 8), np.linspace(0, 1, 6)), -1).reshape(-1, 2),
        ]
    )
    np.testing.assert_array_equal(ours.index_of(meas), theirs.index_of(meas))
    assert ours.index_of([[-100.0, 100.0]]).tolist() == [4]  # clipped to cell (0, 4)
    assert ours.index_of([[3.0, 1.0]]).tolist() == [34]  # the upper edge is in the last cell


def test_archive_matches_pyribs_after_batches():
    ribs = pytest.importorskip("ribs.archives")
    ours = GridArchive(solution_dim=4, dims=(6, 6), ranges=[(0, 1), (0, 1)])
    theirs = ribs.GridArchive(solution_dim=4, dims=(6, 6), ranges=[(0, 1), (0, 1)])
    rng = np.random.default_rng(3)
    for _ in range(5):
        sol, obj, meas = rng.normal(size=(80, 4)), rng.normal(size=80), rng.uniform(size=(80, 2))
        ours.add(sol, obj, meas)
        theirs.add(sol, obj, meas)
    data = theirs.data()
    order = np.argsort(data["index"])
    e = ours.elites()
    np.testing.assert_array_equal(e["index"], data["index"][order])
    np.testing.assert_allclose(e["objective"], data["objective"][order])
    np.testing.assert_allclose(e["solution"], data["solution"][order])
    assert ours.stats.qd_score == pytest.approx(theirs.stats.qd_score)
    assert ours.stats.coverage == pytest.approx(theirs.stats.coverage)


@pytest.mark.parametrize("learning_rate, threshold_min", [(1.0, 0.0), (0.1, -1.0), (None, None)])
def test_archive_thresholds_and_best_match_pyribs_batch_by_batch(learning_rate, threshold_min):
    # The rules pyribs 0.12 applies and optforge follows: a finite threshold_min takes the batch
    # threshold update even at learning_rate = 1; best_elite/obj_max are the best ever added.
    ribs = pytest.importorskip("ribs.archives")
    kw = {} if learning_rate is None else {"learning_rate": learning_rate}
    if threshold_min is not None:
        kw["threshold_min"] = threshold_min
    ours = GridArchive(solution_dim=3, dims=(4, 4), ranges=[(0, 1), (0, 1)], **kw)
    theirs = ribs.GridArchive(solution_dim=3, dims=(4, 4), ranges=[(0, 1), (0, 1)], **kw)
    rng = np.random.default_rng(7)
    differ_from_current_best = 0
    for _ in range(40):
        n = int(rng.integers(1, 30))
        sol, obj, meas = rng.normal(size=(n, 3)), rng.normal(size=n), rng.uniform(size=(n, 2))
        res = ours.add(sol, obj, meas)
        info = theirs.add(sol, obj, meas)
        np.testing.assert_array_equal(res.batch_status, info["status"])
        np.testing.assert_allclose(res.batch_value, info["value"])
        data = theirs.data()
        e = ours.elites()
        order = np.argsort(data["index"])
        np.testing.assert_array_equal(e["index"], data["index"][order])
        np.testing.assert_allclose(e["objective"], data["objective"][order])
        np.testing.assert_allclose(e["threshold"], data["threshold"][order])
        np.testing.assert_allclose(e["solution"], data["solution"][order])
        assert ours.stats.obj_max == pytest.approx(float(theirs.stats.obj_max))
        assert ours.best_elite["objective"] == pytest.approx(theirs.best_elite["objective"])
        np.testing.assert_allclose(ours.best_elite["solution"], theirs.best_elite["solution"])
        assert ours.best_elite["index"] == theirs.best_elite["index"]
        differ_from_current_best += ours.stats.obj_max != e["objective"].max()
    if learning_rate == 0.1:  # the soft archive lost its best elite at some point
        assert differ_from_current_best > 0


def test_threshold_min_without_learning_rate_is_rejected_as_pyribs_does():
    ribs = pytest.importorskip("ribs.archives")
    with pytest.raises(ValueError, match="without setting learning_rate"):
        ribs.GridArchive(solution_dim=2, dims=(2,), ranges=[(0, 1)], threshold_min=0.0)
    with pytest.raises(ValueError, match="without a learning_rate"):
        grid(threshold_min=0.0)
    grid(threshold_min=0.0, learning_rate=1.0)  # explicit CMA-MAE settings are fine


def test_best_elite_survives_a_state_round_trip():
    archive = grid(dims=(2,), solution_dim=1, learning_rate=0.5, threshold_min=0.0)
    archive.add([[1.0]], [5.0], [[0.1]])
    archive.add([[2.0]], [4.0], [[0.1]])  # above the soft threshold 2.5: replaces the elite
    assert archive.elites()["objective"].tolist() == [4.0]
    assert archive.best_elite["objective"] == 5.0 and archive.stats.obj_max == 5.0
    again = grid(dims=(2,), solution_dim=1, learning_rate=0.5, threshold_min=0.0)
    again.load_state_dict(archive.state_dict())
    assert again.best_elite["objective"] == 5.0 and again.best_elite["solution"].tolist() == [1.0]


def test_cvt_nearest_centroid_and_kmeans():
    archive = CVTArchive(
        solution_dim=2, centroids=60, ranges=[(-1, 1), (0, 2)], samples=3000, seed=4
    )
    c = archive.centroids
    assert c.shape == (60, 2)
    assert np.all(c >= [-1, 0]) and np.all(c <= [1, 2])
    assert len(np.unique(c, axis=0)) == 60
    rng = np.random.default_rng(5)
    meas = rng.uniform([-1.5, -0.5], [1.5, 2.5], size=(1000, 2))
    brute = np.argmin(((meas[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(archive.index_of(meas), brute)
    # Seeded: the same arguments give the same centroids; Lloyd lowers the distortion.
    again = CVTArchive(solution_dim=2, centroids=60, ranges=[(-1, 1), (0, 2)], samples=3000, seed=4)
    np.testing.assert_array_equal(again.centroids, c)
    pts = np.random.default_rng(0).uniform(size=(2000, 2))

    def distortion(cent):
        return np.min(((pts[:, None] - cent[None]) ** 2).sum(-1), axis=1).mean()

    assert distortion(kmeans_centroids(pts, 20, max_iter=50)) < distortion(
        kmeans_centroids(pts, 20, max_iter=0)
    )
    given_centroids = CVTArchive(solution_dim=2, centroids=c, ranges=[(-1, 1), (0, 2)])
    np.testing.assert_array_equal(given_centroids.index_of(meas), brute)


def test_gaussian_emitter_rule():
    archive = grid(dims=(4, 4), solution_dim=3)
    e = GaussianEmitter(archive, sigma=[0.1, 0.2, 0.3], batch_size=5, x0=[1.0, 2.0, 3.0])
    rng, ref = np.random.default_rng(7), np.random.default_rng(7)
    np.testing.assert_array_equal(  # empty archive: around x0
        e.ask(5, rng), np.array([1.0, 2.0, 3.0]) + ref.normal(size=(5, 3)) * [0.1, 0.2, 0.3]
    )
    archive.add(np.arange(9.0).reshape(3, 3), [1.0, 2.0, 3.0], [[0.1, 0.1], [0.5, 0.5], [0.9, 0.1]])
    elites = archive.elites()["solution"]
    got = e.ask(6, rng)
    parents = elites[ref.integers(3, size=6)]
    np.testing.assert_allclose(got, parents + ref.normal(size=(6, 3)) * [0.1, 0.2, 0.3])
    clipped = GaussianEmitter(archive, sigma=100.0, bounds=(-1.0, [1.0, 2.0, 3.0]))
    out = clipped.ask(200, rng)
    assert out.min() >= -1.0 and np.all(out.max(axis=0) <= [1.0, 2.0, 3.0])
    assert np.all(out.max(axis=0) == [1.0, 2.0, 3.0])  # sigma = 100 saturates the bounds


def test_iso_line_emitter_rule():
    archive = grid(dims=(4, 4), solution_dim=3)
    e = IsoLineEmitter(archive, iso_sigma=0.5, line_sigma=0.2)
    rng, ref = np.random.default_rng(8), np.random.default_rng(8)
    np.testing.assert_allclose(e.ask(4, rng), ref.normal(size=(4, 3)) * 0.5)  # x0 = 0, no line
    ref.normal(size=(4, 1))
    archive.add(
        np.arange(9.0).reshape(3, 3) ** 2, [1.0, 2.0, 3.0], [[0.1, 0.1], [0.5, 0.5], [0.9, 0.1]]
    )
    elites = archive.elites()["solution"]
    got = e.ask(5, rng)
    pick = elites[ref.integers(3, size=10)]
    x1, x2 = pick[:5], pick[5:]
    expected = x1 + 0.5 * ref.normal(size=(5, 3)) + 0.2 * ref.normal(size=(5, 1)) * (x2 - x1)
    np.testing.assert_allclose(got, expected)
    init = GaussianEmitter(grid(), sigma=0.1, initial_solutions=[[1, 1, 1], [2, 2, 2]])
    np.testing.assert_array_equal(init.ask(3, rng), [[1, 1, 1], [2, 2, 2], [1, 1, 1]])


def make_map_elites(seed=0, cvt=False, soft=False):
    kw = {"learning_rate": 0.05, "threshold_min": 0.0} if soft else {}
    if cvt:
        archive = CVTArchive(
            solution_dim=8, centroids=50, ranges=[(-20.48, 20.48)] * 2, samples=2000, seed=1, **kw
        )
    else:
        archive = GridArchive(solution_dim=8, dims=(10, 10), ranges=[(-20.48, 20.48)] * 2, **kw)
    result = GridArchive(solution_dim=8, dims=(10, 10), ranges=[(-20.48, 20.48)] * 2)
    emitters = [
        GaussianEmitter(archive, sigma=0.5, batch_size=10),
        IsoLineEmitter(archive, iso_sigma=0.3, line_sigma=0.2, batch_size=6),
    ]
    return MapElites(archive, emitters, seed=seed, result_archive=result if soft else None)


def step(search, n=None, told=None):
    cands = search.ask(n)
    told = cands if told is None else told(cands)
    search.tell([c.id for c in told], [sphere_one(c.value) for c in told])
    return cands


@pytest.mark.parametrize(("cvt", "soft"), [(False, False), (True, False), (False, True)])
def test_resume_gives_the_same_next_ask(cvt, soft):
    a = make_map_elites(cvt=cvt, soft=soft)
    for _ in range(6):
        step(a)
    dangling = a.ask(5)  # pending ids survive the round trip
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make_map_elites(seed=99, cvt=cvt, soft=soft)  # the seed comes from the state
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.pending == a.pending == [c.id for c in dangling]
    for _ in range(4):
        ca, cb = step(a), step(b)
        assert [c.id for c in ca] == [c.id for c in cb]
        np.testing.assert_array_equal(
            np.stack([c.value for c in ca]), np.stack([c.value for c in cb])
        )
    a.tell([c.id for c in dangling], [sphere_one(c.value) for c in dangling])
    b.tell([c.id for c in dangling], [sphere_one(c.value) for c in dangling])
    for k, v in a.archive.elites().items():
        np.testing.assert_array_equal(v, b.archive.elites()[k])
    assert a.stats == b.stats


def test_ask_n_splits_across_emitters_and_seeds_matter():
    s = make_map_elites()
    assert s.batch_size == 16
    cands = s.ask(7)
    assert [c.id for c in cands] == list(range(7))
    assert s._take([c.id for c in cands])[1].tolist() == [0, 0, 0, 0, 1, 1, 1]  # 7 * 10/16 -> 4, 3
    runs = []
    for seed in (0, 0, 1):
        t = make_map_elites(seed=seed)
        for _ in range(5):
            step(t)
        runs.append(t.stats.qd_score)
    assert runs[0] == runs[1] != runs[2]


def test_values_are_private_copies():
    s = make_map_elites()
    cands = s.ask()
    expected = sphere_one(cands[0].value.copy())
    cands[0].value[:] = 1e6  # the caller scribbles on its value
    s.tell([cands[0].id], [expected])
    np.testing.assert_array_less(np.abs(s.archive.elites()["solution"]), 1e5)


def test_sphere_definition():
    d = 10
    obj, meas = sphere(np.full((1, d), 2.048))
    assert obj[0] == pytest.approx(100.0)
    np.testing.assert_allclose(meas, [[5 * 2.048, 5 * 2.048]])
    obj, _ = sphere(np.full((1, d), -5.12))
    assert obj[0] == pytest.approx(0.0)
    _, meas = sphere(np.array([[10.0, 0.0, -20.0, 1.0]]))
    np.testing.assert_allclose(meas, [[5.12 / 10.0, 5.12 / -20.0 + 1.0]])
    with pytest.raises(ValueError, match=r"d even and >= 2 \(got shape \(2, 3\)\)"):
        sphere(np.zeros((2, 3)))


def test_heatmaps(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    for archive in (
        grid(dims=(12,)),
        grid(dims=(6, 4)),
        CVTArchive(solution_dim=3, centroids=30, ranges=[(0, 1)] * 2, samples=600),
    ):
        m = archive.measure_dim
        archive.add(rng.normal(size=(40, 3)), rng.normal(size=40), rng.uniform(size=(40, m)))
        ax = archive_heatmap(archive)
        ax.figure.savefig(tmp_path / f"{m}.png")
        matplotlib.pyplot.close(ax.figure)
    with pytest.raises(ValueError, match=r"measure_dim = 3"):
        archive_heatmap(grid(dims=(2, 2, 2)))


@pytest.mark.parametrize(
    ("build", "exc", "msg"),
    [
        (lambda: grid(dims=(0, 3)), ValueError, r"dims\[0\] must be >= 1 \(got 0\)"),
        (
            lambda: GridArchive(solution_dim=2, dims=(3,), ranges=[(1, 0)]),
            ValueError,
            r"ranges\[0\] must be a finite \(low, high\) with low < high",
        ),
        (
            lambda: GridArchive(solution_dim=2, dims=(3, 3), ranges=[(0, 1)]),
            ValueError,
            "one \\(low, high\\) pair per entry of dims",
        ),
        (
            lambda: grid(learning_rate=1.5, threshold_min=0.0),
            ValueError,
            r"learning_rate must be in \[0.0, 1.0\] \(got 1.5\)",
        ),
        (
            lambda: grid(learning_rate=0.0, threshold_min=0.0),
            ValueError,
            r"learning_rate must be in \(0, 1\] \(got 0.0\)",
        ),
        (lambda: grid(learning_rate=0.5), ValueError, "threshold_min must be finite when"),
        (lambda: grid(solution_dim=0), ValueError, r"solution_dim must be >= 1 \(got 0\)"),
        (
            lambda: CVTArchive(solution_dim=2, centroids=10, ranges=[(0, 1)], samples=5),
            ValueError,
            r"samples must be >= centroids = 10 \(got 5\)",
        ),
        (
            lambda: CVTArchive(solution_dim=2, centroids=np.zeros((4, 3)), ranges=[(0, 1)] * 2),
            ValueError,
            r"shape \(cells, 2\)",
        ),
        (lambda: GaussianEmitter(grid(), sigma=-1.0), ValueError, r"sigma must be >= 0"),
        (
            lambda: GaussianEmitter(grid(), sigma=0.1, x0=[0.0]),
            ValueError,
            r"x0 must have shape \(3,\)",
        ),
        (lambda: IsoLineEmitter(grid(), line_sigma=-0.1), ValueError, "line_sigma must be >= 0"),
        (
            lambda: GaussianEmitter(grid(), sigma=0.1, batch_size=0),
            ValueError,
            r"batch_size must be >= 1 \(got 0\)",
        ),
    ],
)
def test_bad_construction(build, exc, msg):
    with pytest.raises(exc, match=msg):
        build()


def test_bad_add_and_map_elites_arguments():
    archive = grid()
    with pytest.raises(ValueError, match=r"solutions must be an array of shape \(batch_size, 3\)"):
        archive.add(np.zeros((2, 4)), [0.0, 0.0], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"objectives must have shape \(2,\)"):
        archive.add(np.zeros((2, 3)), [0.0], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"objectives must be finite .* rows \[1\]"):
        archive.add(np.zeros((2, 3)), [0.0, np.nan], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="measures must be finite"):
        archive.add(np.zeros((2, 3)), [0.0, 1.0], [[0.0, 0.0], [np.inf, 0.0]])
    assert archive.empty
    e = GaussianEmitter(archive, sigma=0.1)
    with pytest.raises(ValueError, match=r"not \[Emitter\(...\)\] \* k"):
        MapElites(archive, [e] * 2)
    with pytest.raises(ValueError, match="reads a different archive"):
        MapElites(grid(), [e])
    with pytest.raises(ValueError, match="at least one emitter"):
        MapElites(archive, [])
    with pytest.raises(ValueError, match=r"seed must be >= 0 \(got -1\)"):
        MapElites(archive, [e], seed=-1)
    s = MapElites(archive, [e])
    with pytest.raises(ValueError, match=r"n must be >= 1 \(got 0\)"):
        s.ask(0)
    with pytest.raises(ValueError, match=r"objectives must have shape \(1,\)"):
        s.tell_arrays([s.ask(1)[0].id], [1.0, 2.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"state has dims = \[4, 4\]"):
        grid(dims=(2, 8)).load_state_dict(archive.state_dict())
    with pytest.raises(ValueError, match=r"solution_dim \(saved 3, here 4\)"):
        grid(solution_dim=4).load_state_dict(archive.state_dict())


# -- CMA-ES emitters (CMA-ME / CMA-MAE) -------------------------------------------------------


def test_batch_feedback_compares_with_the_start_of_the_batch():
    archive = grid(dims=(2,), solution_dim=1)
    archive.add([[0.0]], [1.0], [[0.9]])
    res = archive.add(
        [[0.0], [1.0], [2.0], [3.0], [4.0]],
        [5.0, 7.0, 6.0, 0.5, 3.0],
        [[0.1], [0.2], [0.3], [0.9], [0.9]],
    )
    assert res.status.tolist() == [NEW, IMPROVE, NOT_ADDED, NOT_ADDED, IMPROVE]
    assert res.batch_status.tolist() == [NEW, NEW, NEW, NOT_ADDED, IMPROVE]
    np.testing.assert_allclose(res.batch_value, [5.0, 7.0, 6.0, -0.5, 2.0])


def cmaes_reference(es, parents, evaluated):
    """Hansen's tutorial (arXiv 1604.00772, Fig. 6 / Table 1) written out with loops."""
    n, mu = es.dim, len(parents)
    w = np.array([math.log(mu + 0.5) - math.log(i + 1) for i in range(mu)])
    w /= w.sum()
    mueff = 1 / sum(x * x for x in w)
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    cs = (mueff + 2) / (n + mueff + 5)
    c1 = 2 / ((n + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    damps = 1 + 2 * max(0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
    m, sigma, C = es.mean.copy(), es.sigma, es.cov.copy()
    vals, vecs = np.linalg.eigh(C)
    inv_sqrt = vecs @ np.diag(vals**-0.5) @ vecs.T
    new_m = sum(w[i] * parents[i] for i in range(mu))
    y = (new_m - m) / sigma
    ps = (1 - cs) * es.ps + math.sqrt(cs * (2 - cs) * mueff) * inv_sqrt @ y
    chi = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
    g = (es.evals + evaluated) / es.batch_size
    hsig = np.linalg.norm(ps) / math.sqrt(1 - (1 - cs) ** (2 * g)) / chi < 1.4 + 2 / (n + 1)
    pc = (1 - cc) * es.pc + hsig * math.sqrt(cc * (2 - cc) * mueff) * y
    rank_mu = sum(w[i] * np.outer(parents[i] - m, parents[i] - m) / sigma**2 for i in range(mu))
    c1a = c1 * (1 - (1 - hsig) * cc * (2 - cc))
    C = (1 - c1a - cmu) * C + c1 * np.outer(pc, pc) + cmu * rank_mu
    sigma *= math.exp(min(1, cs / damps * (np.linalg.norm(ps) / chi - 1)))
    return new_m, ps, pc, C, sigma


def test_cmaes_update_matches_the_tutorial():
    es = CMAES(dim=5, sigma0=0.7, batch_size=10, eigen_gap=0.0)  # fresh eigh every generation
    rng = np.random.default_rng(0)
    for _ in range(4):  # several generations so that C, p_c, p_s are non-trivial
        x = es.sample(10, rng)
        f = -((x - 1.0) ** 2).sum(axis=1)
        parents = x[np.argsort(-f)[:5]]
        es._refresh()
        expected = cmaes_reference(es, parents, 10)
        es.update(parents, 10)
        for got, want in zip((es.mean, es.ps, es.pc, es.cov, es.sigma), expected):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def single_cell_optimizer(seed=0):
    archive = GridArchive(solution_dim=6, dims=(1,), ranges=[(0.0, 1.0)])
    emitter = EvolutionStrategyEmitter(
        archive,
        sigma0=0.5,
        ranker="obj",
        selection_rule="mu",
        restart_rule="basic",
        x0=np.full(6, 3.0),
    )
    return MapElites(archive, [emitter], seed=seed)


def shifted_sphere(x):
    return -float(np.sum((np.asarray(x) - 1.0) ** 2)), [0.5]


def test_cma_es_emitter_with_objective_ranker_optimizes():
    search = single_cell_optimizer()
    assert search.batch_size == 4 + int(3 * math.log(6))
    for _ in range(150):
        step_with(search, shifted_sphere)
    assert search.stats.obj_max > -1e-8


def step_with(search, fn, n=None):
    cands = search.ask(n)
    search.tell([c.id for c in cands], [fn(c.value) for c in cands])
    return cands


def test_cma_generation_waits_for_every_candidate():
    search = single_cell_optimizer()
    emitter = search.emitters[0]
    lam = search.batch_size
    cands = search.ask()
    mean0 = emitter.es.mean.copy()
    search.tell([c.id for c in cands[:-2]], [shifted_sphere(c.value) for c in cands[:-2]])
    np.testing.assert_array_equal(emitter.es.mean, mean0)  # generation still open
    extra = search.ask(3)  # drawn from the same distribution: joins the generation
    search.discard([cands[-1].id])
    search.tell(
        [c.id for c in extra] + [cands[-2].id],
        [shifted_sphere(c.value) for c in extra + [cands[-2]]],
    )
    assert emitter.generations == 1 and emitter.es.evals == lam + 3
    assert not np.array_equal(emitter.es.mean, mean0)


def cma_map_elites(seed=0, soft=False):
    kw = {"learning_rate": 0.05, "threshold_min": 0.0} if soft else {}
    archive = GridArchive(solution_dim=8, dims=(10, 10), ranges=[(-20.48, 20.48)] * 2, **kw)
    result = GridArchive(solution_dim=8, dims=(10, 10), ranges=[(-20.48, 20.48)] * 2)
    emitters = [
        EvolutionStrategyEmitter(
            archive, sigma0=0.5, batch_size=6, ranker="imp" if soft else "2imp", restart_rule=3
        )
        for _ in range(3)
    ]
    return MapElites(archive, emitters, seed=seed, result_archive=result if soft else None)


@pytest.mark.parametrize("soft", [False, True])
def test_cma_resume_mid_generation(soft):
    a = cma_map_elites(soft=soft)
    for _ in range(7):
        step(a)
    held = a.ask()
    step(a, told=lambda c: c[::2])  # half of a generation told, half pending
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = cma_map_elites(soft=soft)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for s in (a, b):
        s.tell([c.id for c in held], [sphere_one(c.value) for c in held])
    for _ in range(5):
        ca, cb = step(a), step(b)
        np.testing.assert_array_equal(
            np.stack([c.value for c in ca]), np.stack([c.value for c in cb])
        )
    assert [e.restarts for e in a.emitters] == [e.restarts for e in b.emitters]
    assert a.stats == b.stats


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"ranker": "2rd"}, r"ranker must be one of .* \(got '2rd'\)"),
        ({"selection_rule": "best"}, r"selection_rule must be one of .* \(got 'best'\)"),
        ({"restart_rule": "never"}, r"restart_rule must be .* \(got 'never'\)"),
        ({"restart_rule": 0}, r"restart_rule must be >= 1 \(got 0\)"),
        ({"feedback": "async"}, r"feedback must be 'batch' or 'sequential' \(got 'async'\)"),
        ({"sigma0": 0.0}, r"sigma0 must be > 0 \(got 0.0\)"),
        ({"batch_size": 1}, r"batch_size must be >= 2 \(got 1\)"),
    ],
)
def test_cma_emitter_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        EvolutionStrategyEmitter(grid(), **{"sigma0": 0.5, **kwargs})


def two_emitter_search() -> MapElites:
    a = grid(dims=(5, 5), solution_dim=4)
    emitters = [GaussianEmitter(a, sigma=0.3, batch_size=7), IsoLineEmitter(a, batch_size=5)]
    return MapElites(a, emitters, seed=3)


def test_ask_arrays_and_tell_arrays_give_the_same_search_as_ask_and_tell():
    plain, arrays = two_emitter_search(), two_emitter_search()
    for _ in range(6):
        cands = plain.ask()
        ids, sol = arrays.ask_arrays()
        assert ids.tolist() == [c.id for c in cands]
        np.testing.assert_array_equal(sol, np.stack([c.value for c in cands]))
        obj, meas = -np.sum(sol**2, axis=1), sol[:, :2] % 1.0
        plain.tell([c.id for c in cands], list(zip(obj, meas)))
        arrays.tell_arrays(ids, obj, meas)
    for k, v in plain.archive.elites().items():
        np.testing.assert_array_equal(v, arrays.archive.elites()[k])
    assert plain.pending == arrays.pending == []


def test_ask_returns_a_batch_that_is_a_sequence_of_candidates_and_tells_as_arrays():
    pairs, batch = two_emitter_search(), two_emitter_search()
    for step in range(6):
        listed = pairs.ask()
        cands = batch.ask()
        assert isinstance(cands, Candidates) and len(cands) == 12
        # The same candidates as objects: indexing, iteration, slices, + with a list.
        assert list(cands) == cands and cands[-1].id == cands.ids[-1] == listed[-1].id
        expected_ids = list(range(12 * step, 12 * step + 12))
        assert cands.ids.tolist() == [c.id for c in listed] == expected_ids
        np.testing.assert_array_equal(cands.values, np.stack([c.value for c in listed]))
        assert cands[2:4] + [cands[0]] == [cands[2], cands[3], cands[0]]
        assert np.shares_memory(cands[3].value, cands.values)  # rows are views, not copies
        obj, meas = -np.sum(cands.values**2, axis=1), cands.values[:, :2] % 1.0
        pairs.tell([c.id for c in listed], list(zip(obj, meas)))
        batch.tell(cands, (obj, meas))  # one pair of arrays: the vectorized tell
    for k, v in pairs.archive.elites().items():
        np.testing.assert_array_equal(v, batch.archive.elites()[k])
    assert pairs.pending == batch.pending == []


@pytest.mark.parametrize(
    "objectives",
    [np.array([True, False]), np.array(["1.0", "2.0"]), ["1.0", 2.0], [True, 1.0]],
    ids=["bool array", "str array", "str list", "bool list"],
)
def test_array_tells_reject_non_number_objectives(objectives):
    a = grid()
    s = MapElites(a, [GaussianEmitter(a, sigma=0.1, batch_size=2)], seed=0)
    cands = s.ask()
    meas = np.zeros((2, 2))
    with pytest.raises(TypeError, match="real number"):
        s.tell_arrays(cands.ids, objectives, meas)
    if isinstance(objectives, np.ndarray):
        with pytest.raises(TypeError, match="real number"):
            s.tell(cands, (objectives, meas))
    assert s.pending == cands.ids.tolist()  # nothing was told
    s.tell(cands, (np.array([1.0, 2.0]), meas))
    assert s.pending == [] and len(a) == 1
