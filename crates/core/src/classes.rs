//! FER-2013's faces and classes, as every layer above sees them.

/// Width and height of a FER-2013 face, in pixels.
pub const SIDE: usize = 48;
pub const PIXELS: usize = SIDE * SIDE;
pub const NUM_CLASSES: usize = 7;

/// The class names, in FER-2013's label order (0 Angry ... 6 Neutral).
pub const CLASSES: [&str; NUM_CLASSES] = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];

/// The index of the most probable class.
pub fn argmax(p: &[f32; NUM_CLASSES]) -> usize {
    (0..NUM_CLASSES).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
}
