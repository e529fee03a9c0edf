// Emotion over time for the webcam mode: an exact port of emostyle_rt.video (EmotionSmoother, and the
// classification schedule of EmotionTimeline), so that the page's style does not flicker for the same reasons
// the video path's does not. tests/serving/test_serve_ui.py runs this file and the Python classes on the same
// inputs and requires the same emotions, switches and scores. The options come from the service
// (ui/config.json: TemporalOptions' defaults), never from this file.
//
// Not ported: the face tracker (between classifications the video path follows the face by template matching
// and reclassifies at once when it moves; the page classifies on the schedule only) and the cross-fade
// (crossfade_frames, 0 by default: each request is styled with one emotion).

/** EMA of the scores (time constant in seconds) and the switching rule (a margin held for some seconds, and a
 * minimum time between switches). */
export class EmotionSmoother {
  constructor(labels, options, initial = null) {
    this.labels = labels;
    this.o = options;
    this.scores = null; // label order
    this.emotion = initial;
    this.tObs = null;
    this.lead = null; // [candidate index, since when]
    this.chosen = null; // when the style last switched (null: not yet)
  }

  /** Fold one classification (scores in label order) at time t (seconds) into the EMA. */
  observe(t, scores) {
    if (this.scores === null || this.tObs === null) {
      this.scores = scores.slice();
    } else {
      const tau = this.o.smooth_seconds;
      const a = tau <= 0 ? 1.0 : 1.0 - Math.exp(-Math.max(0.0, t - this.tObs) / tau);
      this.scores = this.scores.map((s, k) => s + a * (scores[k] - s));
    }
    this.tObs = t;
  }

  /** Update the emotion at time t; whether it switched. The first classification sets it without a switch. */
  decide(t) {
    if (this.scores === null) return false;
    let best = 0;
    for (let k = 1; k < this.scores.length; k++) if (this.scores[k] > this.scores[best]) best = k; // numpy's argmax
    if (this.emotion === null) { // the first choice, from one classification, may be corrected at once
      this.emotion = this.labels[best];
      return false;
    }
    const cur = this.labels.indexOf(this.emotion);
    if (best === cur || this.scores[best] - this.scores[cur] < this.o.switch_margin) {
      this.lead = null;
      return false;
    }
    if (this.lead === null || this.lead[0] !== best) this.lead = [best, t];
    const young = this.chosen !== null && t - this.chosen + 1e-9 < this.o.min_segment_seconds;
    if (t - this.lead[1] + 1e-9 >= this.o.switch_seconds && !young) {
      this.emotion = this.labels[best];
      this.lead = null;
      this.chosen = t;
      return true;
    }
    return false;
  }
}

/** The video path's analysis stage without the face tracker: which frames are classified, and each frame's emotion. */
export class EmotionTimeline {
  constructor(labels, options, initial) {
    this.labels = labels;
    this.o = options;
    this.initial = initial;
    this.smoother = new EmotionSmoother(labels, options);
    this.last = null; // [index, time] of the last classification
  }

  /** Whether frame i (at t seconds) is classified: "start", "schedule" or "" (frames must come in order). */
  schedule(i, t) {
    let reason = "";
    if (this.last === null) reason = "start";
    else if (i - this.last[0] >= this.o.classify_every || t - this.last[1] + 1e-9 >= this.o.classify_seconds) {
      reason = "schedule";
    }
    if (reason) this.last = [i, t];
    return reason;
  }

  /** What a classification of the frame at t gave ({emotion, scores}, as /v1/classify answers); null when it
   * found no evidence (no face, --no-face error). No scores (the no-face policy's fixed emotion): that one, 1.0. */
  observe(t, found) {
    if (!found) return;
    const given = found.scores && Object.keys(found.scores).length > 0;
    const p = (k) => (given ? found.scores[k] ?? 0.0 : k === found.emotion ? 1.0 : 0.0);
    this.smoother.observe(t, this.labels.map(p));
  }

  /** The frame's emotion, whether it switched there, and the smoothed scores ({} before the first classification). */
  decide(t) {
    const switched = this.smoother.decide(t);
    const scores = {};
    if (this.smoother.scores !== null) this.labels.forEach((k, j) => { scores[k] = this.smoother.scores[j]; });
    return { emotion: this.smoother.emotion ?? this.initial, switched, scores };
  }
}
