//! Faces in the wild: find them in a photo (`detect`), cut each out the way FER-2013 framed its
//! faces (`frame`), and classify the 48x48 result. One pipeline serves `fer predict` on photos,
//! folders and videos alike.

pub mod detect;
