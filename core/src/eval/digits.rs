//! The demo family's data: UCI's 8×8 handwritten digits (`assets/data/`, CC BY 4.0), shipped
//! inside the binary, and the four domains the task experts specialise in.

use std::io::Read as _;

use flate2::read::GzDecoder;

/// The data set as scikit-learn ships it: 1,797 lines of 64 pixels (0..16) and a label.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../assets/data/digits.csv.gz");

/// Pixels per image (8 × 8).
pub const PIXELS: usize = 64;
pub const SIDE: usize = 8;
pub const CLASSES: usize = 10;

/// One task: the digits seen through a fixed transform.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Upright,
    /// Turned 90° clockwise.
    Rotated,
    /// Left and right swapped.
    Mirrored,
    /// Ink and paper swapped (16 − v).
    Inverted,
}

impl Domain {
    pub const ALL: [Self; 4] = [Self::Upright, Self::Rotated, Self::Mirrored, Self::Inverted];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Upright => "upright",
            Self::Rotated => "rotated",
            Self::Mirrored => "mirrored",
            Self::Inverted => "inverted",
        }
    }

    /// The transformed image, scaled to 0..1.
    pub fn apply(self, image: &[u8; PIXELS]) -> [f32; PIXELS] {
        let mut out = [0f32; PIXELS];
        for r in 0..SIDE {
            for c in 0..SIDE {
                let v = f32::from(match self {
                    Self::Upright | Self::Inverted => image[r * SIDE + c],
                    // Output (r, c) of a clockwise turn comes from input (SIDE-1-c, r).
                    Self::Rotated => image[(SIDE - 1 - c) * SIDE + r],
                    Self::Mirrored => image[r * SIDE + (SIDE - 1 - c)],
                }) / 16.0;
                out[r * SIDE + c] = if self == Self::Inverted { 1.0 - v } else { v };
            }
        }
        out
    }
}

/// Which part of the data a sample belongs to: every fifth image is held out for testing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn of(index: usize) -> Self {
        if index.is_multiple_of(5) {
            Self::Test
        } else {
            Self::Train
        }
    }
}

/// The 1,797 raw images and labels.
#[derive(Clone, Debug)]
pub struct Digits {
    pub images: Vec<[u8; PIXELS]>,
    pub labels: Vec<u8>,
}

impl Digits {
    /// Decodes the bundled data set.
    pub fn load() -> Self {
        let mut text = String::new();
        GzDecoder::new(DIGITS_CSV_GZ)
            .read_to_string(&mut text)
            .expect("the bundled digits.csv.gz is valid gzip");
        let mut images = Vec::with_capacity(1797);
        let mut labels = Vec::with_capacity(1797);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let values: Vec<u8> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>().expect("numbers") as u8)
                .collect();
            assert_eq!(values.len(), PIXELS + 1, "64 pixels and a label per line");
            let mut image = [0u8; PIXELS];
            image.copy_from_slice(&values[..PIXELS]);
            images.push(image);
            labels.push(values[PIXELS]);
        }
        Self { images, labels }
    }

    /// The samples of `split` in `domain`: pixels (row-major, n × 64) and labels.
    pub fn samples(&self, domain: Domain, split: Split) -> (Vec<f32>, Vec<u8>) {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (i, (image, &label)) in self.images.iter().zip(&self.labels).enumerate() {
            if Split::of(i) == split {
                pixels.extend_from_slice(&domain.apply(image));
                labels.push(label);
            }
        }
        (pixels, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_set_is_complete() {
        let d = Digits::load();
        assert_eq!(d.images.len(), 1797);
        assert!(d.labels.iter().all(|&l| l < 10));
        let (test, labels) = d.samples(Domain::Upright, Split::Test);
        assert_eq!(labels.len(), 360);
        assert_eq!(test.len(), 360 * PIXELS);
    }

    #[test]
    fn transforms_move_pixels_as_named() {
        let mut image = [0u8; PIXELS];
        image[1] = 16; // row 0, column 1
        let rotated = Domain::Rotated.apply(&image);
        assert_eq!(rotated[SIDE + (SIDE - 1)], 1.0); // row 1, last column
        let mirrored = Domain::Mirrored.apply(&image);
        assert_eq!(mirrored[SIDE - 2], 1.0);
        let inverted = Domain::Inverted.apply(&image);
        assert_eq!(inverted[1], 0.0);
        assert_eq!(inverted[0], 1.0);
    }
}
