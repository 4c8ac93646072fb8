//! Faces linked across the sampled frames of a video into tracks, and each track's class
//! probabilities smoothed over time, so that one person keeps one number and a label that
//! changes when the expression does, not with every frame's noise.
//!
//! Linking: each face of a frame goes to the live track whose last box overlaps it most
//! (intersection over union at least [`MIN_OVERLAP`]), or failing that whose last box's centre
//! is nearest, within half a box width; the best pairs are taken first, one face per track. A
//! track not seen for [`Tracker::max_gap`] seconds ends. Smoothing: an exponential moving
//! average over time with a half-life of `half_life` seconds, whatever the sampling: a face's
//! probabilities count half after one half-life, a quarter after two. After a real change of
//! expression, the new label takes over within one half-life (plus one sampled frame).

use crate::classes::NUM_CLASSES;
use crate::face::detect::FaceBox;

/// Boxes that overlap at least this much (intersection over union) are one face.
pub const MIN_OVERLAP: f64 = 0.3;

/// The smoothing's default half-life, in seconds.
pub const DEFAULT_HALF_LIFE: f64 = 0.5;

struct Track {
    id: u64,
    bbox: FaceBox,
    seen: f64,
    smoothed: [f32; NUM_CLASSES],
}

/// What the tracker says of one face of a frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tracked {
    pub track: u64,
    pub smoothed: [f32; NUM_CLASSES],
}

pub struct Tracker {
    half_life: f64,
    /// Seconds a track may go unseen and still continue.
    pub max_gap: f64,
    next_id: u64,
    tracks: Vec<Track>,
}

/// How alike two boxes are, for linking (higher is better), or None when they are not one face.
fn likeness(a: &FaceBox, b: &FaceBox) -> Option<f64> {
    let o = a.iou(b);
    if o >= MIN_OVERLAP {
        return Some(1.0 + o);
    }
    let ((ax, ay), (bx, by)) = (a.centre(), b.centre());
    let reach = 0.5 * (a.w + b.w) / 2.0;
    let distance = (ax - bx).hypot(ay - by);
    (distance < reach).then(|| 1.0 - distance / reach)
}

impl Tracker {
    pub fn new(half_life: f64) -> Tracker {
        Tracker { half_life: half_life.max(1e-6), max_gap: (4.0 * half_life).max(1.0), next_id: 0, tracks: Vec::new() }
    }

    /// Links the faces of the frame at `time` (seconds, increasing) to tracks: for each face,
    /// its track and its track's smoothed probabilities.
    pub fn update(&mut self, time: f64, faces: &[(FaceBox, [f32; NUM_CLASSES])]) -> Vec<Tracked> {
        self.tracks.retain(|t| time - t.seen <= self.max_gap);
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (f, (bbox, _)) in faces.iter().enumerate() {
            for (t, track) in self.tracks.iter().enumerate() {
                if let Some(score) = likeness(&track.bbox, bbox) {
                    pairs.push((score, t, f));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_of: Vec<Option<usize>> = vec![None; faces.len()];
        let mut taken = vec![false; self.tracks.len()];
        for (_, t, f) in pairs {
            if !taken[t] && track_of[f].is_none() {
                taken[t] = true;
                track_of[f] = Some(t);
            }
        }
        faces
            .iter()
            .zip(track_of)
            .map(|((bbox, probabilities), matched)| {
                let t = match matched {
                    Some(t) => {
                        let track = &mut self.tracks[t];
                        let weight = 1.0 - 0.5f64.powf((time - track.seen).max(0.0) / self.half_life);
                        for (s, &p) in track.smoothed.iter_mut().zip(probabilities) {
                            *s += (weight as f32) * (p - *s);
                        }
                        track.bbox = *bbox;
                        track.seen = time;
                        t
                    }
                    None => {
                        self.tracks.push(Track { id: self.next_id, bbox: *bbox, seen: time, smoothed: *probabilities });
                        self.next_id += 1;
                        self.tracks.len() - 1
                    }
                };
                Tracked { track: self.tracks[t].id, smoothed: self.tracks[t].smoothed }
            })
            .collect()
    }
}

/// Label changes per second along a sequence of (time, label).
pub fn changes_per_second(labels: &[(f64, usize)]) -> f64 {
    let changes = labels.windows(2).filter(|w| w[0].1 != w[1].1).count();
    let span = labels.last().map_or(0.0, |l| l.0) - labels.first().map_or(0.0, |f| f.0);
    if span > 0.0 {
        changes as f64 / span
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::argmax;

    fn face(x: f64, class: usize) -> (FaceBox, [f32; NUM_CLASSES]) {
        let mut p = [0.0; NUM_CLASSES];
        p[class] = 1.0;
        (FaceBox { x, y: 100.0, w: 80.0, h: 80.0 }, p)
    }

    #[test]
    fn two_people_keep_their_tracks_as_they_move_and_cross_nobody() {
        let mut tracker = Tracker::new(0.5);
        let mut ids = Vec::new();
        for k in 0..10 {
            // One walks right 10 px a frame, the other stands; listed in either order.
            let (a, b) = (face(100.0 + 10.0 * k as f64, 3), face(500.0, 6));
            let frame = if k % 2 == 0 { vec![a, b] } else { vec![b, a] };
            let tracked = tracker.update(k as f64 * 0.2, &frame);
            let (walker, stander) = if k % 2 == 0 { (tracked[0], tracked[1]) } else { (tracked[1], tracked[0]) };
            ids.push((walker.track, stander.track));
        }
        assert!(ids.iter().all(|&id| id == ids[0]) && ids[0].0 != ids[0].1, "{ids:?}");
        // Gone for longer than the gap, a face starts a new track.
        let later = tracker.update(10.0, &[face(190.0, 3)]);
        assert!(later[0].track > ids[0].0.max(ids[0].1));
    }

    #[test]
    fn smoothing_calms_flicker_and_follows_a_real_change_within_its_half_life() {
        // 10 frames a second: 4 s of a happy face with every third frame misread as fear, then
        // a real change to surprise.
        let frames: Vec<(f64, usize)> = (0..60).map(|k| (k as f64 * 0.1, if k >= 40 { 5 } else if k % 3 == 2 { 2 } else { 3 })).collect();
        let mut tracker = Tracker::new(0.5);
        let smoothed: Vec<(f64, usize)> = frames.iter().map(|&(t, c)| (t, argmax(&tracker.update(t, &[face(100.0, c)])[0].smoothed))).collect();
        let before = |v: &[(f64, usize)]| changes_per_second(&v[..40]);
        assert!(before(&frames) > 4.0, "raw flicker {}", before(&frames));
        assert_eq!(before(&smoothed), 0.0, "smoothed: happy throughout");
        // The change at 4.0 s shows within one half-life (and one frame).
        let switched = smoothed.iter().find(|&&(t, c)| t >= 4.0 && c == 5).map(|&(t, _)| t).expect("it follows the change");
        assert!(switched - 4.0 <= 0.5 + 0.1 + 1e-9, "switched at {switched}");
        assert!(smoothed[40..].iter().skip_while(|&&(_, c)| c != 5).all(|&(_, c)| c == 5));
    }
}
