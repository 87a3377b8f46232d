import numpy as np
import pytest

from rtdecode.errors import ModelFileError
from rtdecode.models.bank import CandidateBank
from rtdecode.numerics.stats import correlations, normalise_rows
from rtdecode.numerics.topk import certified_top_k
from rtdecode.pipeline.ranking import Identifier, QuantisedRows, pairwise_identification, top_k


def test_correlations_equal_numpy_corrcoef():
    rng = np.random.default_rng(0)
    pred, cand = rng.standard_normal((4, 30)), rng.standard_normal((50, 30))
    expected = np.corrcoef(pred, cand)[:4, 4:]
    np.testing.assert_allclose(
        correlations(pred, normalise_rows(cand).astype(np.float32)), expected, atol=1e-5
    )


def test_constant_rows_correlate_zero():
    assert np.all(normalise_rows(np.ones((2, 5))) == 0)


def test_pairwise_identification_known_values_and_ties():
    scores = np.array([[0.9, 0.1, 0.5, 0.95], [0.2, 0.2, 0.2, 0.2]])
    acc = pairwise_identification(scores, np.array([0, 1]))
    np.testing.assert_allclose(acc, [2 / 3, 1.0])  # one false candidate beats it; ties count as correct


def test_top_k_matches_argsort():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((3, 100)).astype(np.float32)
    idx, val = top_k(s, 7)
    np.testing.assert_array_equal(idx, np.argsort(-s, axis=1)[:, :7])
    np.testing.assert_array_equal(val, np.sort(s, axis=1)[:, ::-1][:, :7])


def test_bank_roundtrip_and_identifier(tmp_path):
    rng = np.random.default_rng(2)
    feats = {"a": rng.standard_normal((20, 6)), "b": rng.standard_normal((20, 4))}
    bank = CandidateBank([f"c{i}" for i in range(20)], feats)
    bank.save(tmp_path / "bank.npz")
    loaded = CandidateBank.load(tmp_path / "bank.npz")
    assert loaded.labels == bank.labels
    np.testing.assert_array_equal(loaded.features["a"], bank.features["a"])
    ident = Identifier(loaded, {"a": slice(0, 6), "b": slice(6, 10)}, k=3)
    pred = np.concatenate([feats["a"][5], feats["b"][7]])[None] * 3 + 1
    idx, score = ident.rank(pred)
    assert idx.shape == (1, 2, 3) and idx[0, 0, 0] == 5 and idx[0, 1, 0] == 7
    np.testing.assert_allclose(score[0, :, 0], 1.0, atol=1e-5)


def test_identifier_refuses_a_bank_that_does_not_match():
    bank = CandidateBank(["x", "y"], {"a": np.ones((2, 3))})
    with pytest.raises(ModelFileError, match="no layer 'b'"):
        Identifier(bank, {"b": slice(0, 3)})
    with pytest.raises(ModelFileError, match="decoder predicts 4 units, candidates have 3"):
        Identifier(bank, {"a": slice(0, 4)})
    with pytest.raises(ModelFileError, match="do not match 3 labels"):
        CandidateBank(["x", "y", "z"], {"a": np.ones((2, 3))})


def test_loading_a_corrupt_bank_is_a_clear_error(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelFileError, match="cannot read candidate bank"):
        CandidateBank.load(tmp_path / "bad.npz")


def _structured_bank(n=2000, m=300, seed=0):
    from rtdecode.sim.features import make_feature_bank

    fb = make_feature_bank(n, m, seed=seed)
    return fb, CandidateBank(fb.labels, fb.category_features)


def test_quantised_dot_products_stay_within_their_bound():
    rng = np.random.default_rng(3)
    rows = normalise_rows(rng.standard_normal((500, 257)) ** 3)  # heavy tails: coarse int8 steps
    q = QuantisedRows.quantise(rows)
    assert q.codes.dtype == np.int8 and np.abs(q.codes).max() == 127
    p = normalise_rows(rng.standard_normal((4, 257))).astype(np.float32)
    approx, bound = q.dot_bounds(p)
    exact = p.astype(np.float64) @ rows.T
    assert (np.abs(exact - approx) <= bound).all()
    assert np.median(bound) < 0.05 and np.abs(exact - approx).max() > 0  # a real, not a vacuous bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_quantisation_is_the_numpy_formula(dtype):
    # The compiled passes against the formulas written out in numpy: codes and scales exactly,
    # error and norm to float64 rounding (the sums run in another order); zero rows stay zero.
    rng = np.random.default_rng(8)
    pred = (rng.standard_normal((6, 203)) ** 3 * 5 + 2).astype(dtype)
    pred[2] = 7.0  # no variation
    p, query = QuantisedRows.queries(pred)
    want_p = normalise_rows(pred).astype(np.float32)
    np.testing.assert_allclose(p, want_p, rtol=2**-23, atol=0)
    assert not p[2].any() and p.dtype == np.float32
    for rows, q in ((p, query), (pred, QuantisedRows.quantise(pred))):
        x = rows.astype(np.float64)
        amax = np.abs(x).max(axis=1)
        scale = np.where(amax > 0, amax / 127, 1.0)
        codes = np.rint(x / scale[:, None])
        np.testing.assert_array_equal(q.scale, scale)
        np.testing.assert_array_equal(q.codes[:, :203], codes)
        assert q.codes.shape == (6, 256) and not q.codes[:, 203:].any()
        np.testing.assert_allclose(q.error, np.linalg.norm(x - codes * scale[:, None], axis=1), rtol=1e-12)
        np.testing.assert_allclose(q.norm, np.linalg.norm(codes * scale[:, None], axis=1), rtol=1e-12)


def test_int8_ranking_equals_float32_ranking():
    fb, bank = _structured_bank()
    slices = {ly: slice(i * 300, (i + 1) * 300) for i, ly in enumerate(fb.layers)}
    f32 = Identifier(bank, slices, k=10, precision="float32")
    i8 = Identifier(bank, slices, k=10, precision="int8")
    i8_two = Identifier(bank, slices, k=10, precision="int8", threads=2)
    rng = np.random.default_rng(4)
    for noise in (0.5, 2.0, 8.0):  # from easy to nearly unrelated predictions
        cats = rng.integers(0, len(fb.labels), 3)
        pred = np.concatenate(
            [fb.category_features[ly][cats] + rng.normal(0, noise, (3, 300)) for ly in fb.layers], axis=1
        ).astype(np.float32)
        a, b, c = f32.rank(pred), i8.rank(pred), i8_two.rank(pred)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], atol=1e-6)
        np.testing.assert_array_equal(b[0], c[0])
    codes = i8.quantised[fb.layers[0]].codes
    assert codes.shape == (2000, 320) and not codes[:, 300:].any()  # 300 codes, zero-padded to 64 bytes


@pytest.mark.parametrize("precision", ["int8", "float32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_ranking_volumes_together_gives_each_the_ranking_it_gets_alone(precision, threads):
    # Several volumes of near-tied predictions (copies of one plus noise far below the int8 step):
    # one pass over the bank for all of them must give each exactly its own ranking.
    fb, bank = _structured_bank()
    slices = {ly: slice(i * 300, (i + 1) * 300) for i, ly in enumerate(fb.layers)}
    rng = np.random.default_rng(6)
    base = np.concatenate([fb.category_features[ly][[5, 9]] for ly in fb.layers], axis=1)
    preds = [(base + rng.normal(0, s, base.shape)).astype(np.float32) for s in (1e-4, 1e-3, 0.3, 1e-4, 3.0)]
    preds.append(preds[0][:1])  # a volume with fewer rows
    with Identifier(bank, slices, k=7, precision=precision, threads=threads) as ident:
        together = ident.rank_many(preds)
        alone = [ident.rank(p) for p in preds]
    assert len(together) == len(preds)
    for (ti, ts), (ai, as_), p in zip(together, alone, preds):
        assert ti.shape == (p.shape[0], len(fb.layers), 7)
        np.testing.assert_array_equal(ti, ai)
        np.testing.assert_array_equal(ts, as_)


def test_int8_ranking_rescores_near_ties_instead_of_guessing():
    # 40 candidates whose scores differ by ~1e-4, far less than the int8 error bound (~1e-2).
    rng = np.random.default_rng(5)
    base = rng.standard_normal(200)
    feats = np.vstack([base + rng.normal(0, 2e-3, (40, 200)), rng.standard_normal((400, 200))])
    bank = CandidateBank([f"c{i}" for i in range(440)], {"l": feats})
    pred = (base + rng.normal(0, 0.05, 200))[None].astype(np.float32)
    a = Identifier(bank, {"l": slice(0, 200)}, k=10, precision="float32").rank(pred)
    b = Identifier(bank, {"l": slice(0, 200)}, k=10, precision="int8").rank(pred)
    np.testing.assert_array_equal(a[0], b[0])
    assert (a[0] < 40).all()


def test_identifier_parameters_are_checked():
    bank = CandidateBank(["a", "b"], {"l": np.eye(2, 3)})
    with pytest.raises(ValueError, match="precision"):
        Identifier(bank, {"l": slice(0, 3)}, precision="float16")
    with pytest.raises(ValueError, match="threads"):
        Identifier(bank, {"l": slice(0, 3)}, threads=0)
    wide = CandidateBank(["a", "b"], {"l": np.eye(2, 140_000)})  # int8 sums would overflow int32
    with pytest.raises(ModelFileError, match="too many for int8 ranking"):
        Identifier(wide, {"l": slice(0, 140_000)})
    assert Identifier(wide, {"l": slice(0, 140_000)}, precision="float32").rank(np.ones((1, 140_000)))[0].size


def test_int8_ranking_of_fewer_candidates_than_k_ranks_them_all():
    rng = np.random.default_rng(8)
    bank = CandidateBank([f"c{i}" for i in range(5)], {"l": rng.standard_normal((5, 70))})
    pred = rng.standard_normal((3, 70)).astype(np.float32)
    a = Identifier(bank, {"l": slice(0, 70)}, k=10, precision="float32").rank(pred)
    b = Identifier(bank, {"l": slice(0, 70)}, k=10, precision="int8").rank(pred)
    assert b[0].shape == (3, 1, 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def _certified_in_python(acc, row_scale, row_error, q_scale, q_slack, q_norm, features, p, k):
    # certified_top_k's search written out in Python and numpy, a row at a time.
    out = []
    for q in range(acc.shape[0]):
        kept, first, low = [], [], 0
        for i in range(acc.shape[1]):
            v = acc[q, i] * row_scale[i]
            if i < k:
                kept.append(v)
                first.append(i)
            elif v > kept[low]:
                kept[low], first[low] = v, i
            if i >= k - 1:
                low = int(np.argmin(kept))
        floor = min(np.dot(features[i], p[q]) for i in first) - q_slack[q]
        upper = acc[q] * row_scale * q_scale[q] + row_error * q_norm[q]
        need = np.flatnonzero(upper >= floor)
        exact = features[need] @ p[q]
        order = np.argsort(-exact, kind="mergesort")[:k]
        out.append((need[order], exact[order], len(need)))
    return out


def test_certified_top_k_rescores_exactly_the_rows_whose_bound_reaches_the_floor():
    # Values on a grid of 1/8: every float32 dot product is exact, so any summation order agrees,
    # and scores tie often (ties must resolve the same way, lower row first).
    rng = np.random.default_rng(9)
    features = (rng.integers(-3, 4, (1000, 64)) / 8).astype(np.float32)
    p = (rng.integers(-3, 4, (5, 64)) / 8).astype(np.float32)
    features[700] = features[3] = p[1]  # two equal rows, the best for query 1: a tie, far apart
    rows, query = QuantisedRows.quantise(features), QuantisedRows.quantise(p)
    acc = (rows.codes.astype(np.int32) @ query.codes.T.astype(np.int32)).T.copy()
    slack = query.error + 1e-3
    idx, val = np.empty((5, 7), np.int32), np.empty((5, 7), np.float32)
    bounds = (rows.scale, rows.error, query.scale, slack, query.norm)
    scored = certified_top_k(acc, *bounds, features, p, idx, val)
    want = _certified_in_python(acc, *bounds, features, p, 7)
    for q, (i, v, n) in enumerate(want):
        np.testing.assert_array_equal(idx[q], i)
        np.testing.assert_array_equal(val[q], v)
        assert scored[q] == n
    assert idx[1, :2].tolist() == [3, 700]
