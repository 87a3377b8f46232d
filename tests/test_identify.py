import numpy as np
import pytest

from rtdecode.errors import BundleError
from rtdecode.identify import (
    CandidateBank,
    Identifier,
    correlations,
    normalise_rows,
    pairwise_identification,
    top_k,
)


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
    with pytest.raises(BundleError, match="no layer 'b'"):
        Identifier(bank, {"b": slice(0, 3)})
    with pytest.raises(BundleError, match="decoder predicts 4 units, candidates have 3"):
        Identifier(bank, {"a": slice(0, 4)})
    with pytest.raises(BundleError, match="do not match 3 labels"):
        CandidateBank(["x", "y", "z"], {"a": np.ones((2, 3))})


def test_loading_a_corrupt_bank_is_a_clear_error(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="cannot read candidate bank"):
        CandidateBank.load(tmp_path / "bad.npz")
