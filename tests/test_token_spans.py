"""Token spans from CIF weights (generation/token_spans.py): a hand-computed case, a dense float64 sampling of
the cumulative weight as the reference, and the properties the writers rely on."""
import numpy as np
import pytest

from fairseq_hkd.generation.plot import FRAME_CENTRE_OFFSET_S, encoder_frame_centres
from fairseq_hkd.generation.token_spans import emitted_token_spans, frame_edges, token_spans


def test_hand_computed_case():
    """Weights 0.5 0.5 0 0 1 (sum 2, two tokens, one 10-ms frame per encoder frame): token 0 covers frames 0-1;
    token 1's weight starts after the two silent frames, so its start is frame 4's edge, not the crossing
    at the end of frame 1 (floor 0.1); with floor 0 it starts at the crossing."""
    e = FRAME_CENTRE_OFFSET_S - 0.005 + 0.01 * np.arange(6)
    assert frame_edges(5, 1) == pytest.approx(e)
    starts, ends = token_spans(np.array([0.5, 0.5, 0.0, 0.0, 1.0]), 2, 1, floor=0.1)
    assert starts == pytest.approx([e[0], e[4]]) and ends == pytest.approx([e[2], e[5]])
    starts, ends = token_spans(np.array([0.5, 0.5, 0.0, 0.0, 1.0]), 2, 1, floor=0.0)
    assert starts == pytest.approx([e[0], e[2]]) and ends == pytest.approx([e[2], e[5]])
    # scaled to the count: the same weights halved give the same spans; a crossing inside a frame
    starts, ends = token_spans(np.array([0.25, 0.25, 0.0, 0.0, 0.5]), 2, 1, floor=0.1)
    assert ends == pytest.approx([e[2], e[5]])
    starts, ends = token_spans(np.array([0.4, 0.8, 0.8]), 2, 4, floor=0.1)  # 40-ms frames, C = 0.4 1.2 2.0
    e4 = frame_edges(3, 4)
    assert ends[0] == pytest.approx(e4[1] + 0.6 / 0.8 * (e4[2] - e4[1]))  # C reaches 1 three quarters into frame 1
    assert starts[1] == pytest.approx(ends[0])  # frame 1 gives token 1 0.2 >= floor: it starts at the crossing


def dense_reference(alpha, n, ds, floor, steps=20000):
    """The spans read off C(t) sampled densely: weight spread evenly over each frame's time."""
    a = np.asarray(alpha, dtype=np.float64) * n / np.sum(alpha)
    edges = frame_edges(len(a), ds)
    t = np.linspace(edges[0], edges[-1], steps * len(a) + 1)
    frame = np.minimum(np.searchsorted(edges, t, side="right") - 1, len(a) - 1)
    c0 = np.concatenate([[0.0], np.cumsum(a)])
    C = c0[frame] + a[frame] * (t - edges[frame]) / (edges[frame + 1] - edges[frame])
    starts, ends = [], []
    for k in range(n):
        start = t[np.argmax(C >= k - 1e-12)] if k else edges[0]
        end = t[np.argmax(C >= k + 1 - 1e-9)] if k + 1 < n else edges[-1] if a[-1] > 0 else t[np.argmax(C >= n - 1e-9)]
        # the token's weight in each frame it touches, by integrating the indicator of k <= C < k + 1
        for f in range(len(a)):
            sel = frame == f
            share = np.sum((C[sel][1:] - C[sel][:-1]) * ((C[sel][:-1] >= k) & (C[sel][:-1] < k + 1)))
            if edges[f + 1] <= start + 1e-12:
                continue
            if edges[f] > end:
                break
            if share >= floor - 1e-3:
                if edges[f] > start:
                    start = min(edges[f], end)
                break
        starts.append(start)
        ends.append(end)
    return np.array(starts), np.array(ends)


@pytest.mark.parametrize("seed", range(6))
def test_matches_dense_sampling(seed):
    rng = np.random.default_rng(seed)
    T, ds = int(rng.integers(8, 25)), int(rng.choice([1, 4, 8]))
    alpha = rng.uniform(0, 1, T) * (rng.uniform(size=T) > 0.3)  # silent frames among them
    alpha[0] = max(alpha[0], 0.05)
    alpha[-1] = max(alpha[-1], 0.05)
    n = int(rng.integers(1, max(2, int(alpha.sum() * 1.5))))
    starts, ends = token_spans(alpha, n, ds, floor=0.15)
    ref_s, ref_e = dense_reference(alpha, n, ds, 0.15, steps=2000)
    frame_s = ds * 0.01
    assert ends == pytest.approx(ref_e, abs=frame_s / 1000)
    assert starts == pytest.approx(ref_s, abs=frame_s / 1000)


@pytest.mark.parametrize("floor", [0.0, 0.1, 0.5])
def test_spans_are_ordered_disjoint_and_inside_the_audio(floor):
    rng = np.random.default_rng(1)
    for _ in range(50):
        T = int(rng.integers(1, 40))
        alpha = rng.uniform(0, 1, T) * (rng.uniform(size=T) > 0.4)
        n = int(rng.integers(0, 12))
        starts, ends = token_spans(alpha, n, 8, floor=floor)
        edges = frame_edges(T, 8)
        assert len(starts) == len(ends) == n
        assert np.all(starts <= ends) and np.all(ends[:-1] <= starts[1:] + 1e-12)
        assert np.all(starts >= edges[0] - 1e-12) and np.all(ends <= edges[-1] + 1e-12)
        if floor == 0.0 and n:
            assert starts[1:] == pytest.approx(ends[:-1])  # contiguous: every bit of weight is some token's
        if n and alpha.sum() == 0:
            assert starts == pytest.approx(np.linspace(edges[0], edges[-1], n + 1)[:-1])


def test_the_end_of_a_span_lies_in_the_fire_frame():
    """Where CIF fires (the running sum of the scaled weights crosses 1, 2, ...), the span of that token ends:
    inside the fire frame, so within half a frame of the fire's time (the frame centre)."""
    from fairseq_hkd.runtime.cif import cif_numpy, fire_frames

    rng = np.random.default_rng(3)
    for _ in range(20):
        T = int(rng.integers(5, 30))
        alpha = rng.uniform(0.05, 0.6, (1, T)).astype(np.float32)
        n = max(1, int(np.floor(alpha.sum())))
        scaled = alpha * (n / alpha.sum())
        h = rng.standard_normal((1, T, 4)).astype(np.float32)
        out = cif_numpy(scaled, h, np.array([T]), 1.0, 0.5)
        fires = fire_frames(out.fire_mask, out.lengths, np.array([T]))[0]
        _, ends = token_spans(alpha[0], len(fires), 8)
        assert np.abs(ends - encoder_frame_centres(fires, 8)) == pytest.approx(np.zeros(len(fires)), abs=0.04 + 1e-4)


def test_emitted_spans_follow_the_steps_and_clip_to_the_audio():
    alpha = np.array([0.5, 0.5, 0.5, 0.5, 1.0])
    starts, ends = token_spans(alpha, 3, 8)
    got = emitted_token_spans(alpha, 3, [0, 2], 8, duration=0.3)
    assert got == [(starts[0], ends[0]), (min(starts[2], 0.3), min(ends[2], 0.3))]
