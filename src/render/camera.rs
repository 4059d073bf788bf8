//! Cameras on a sphere around the object, in the study's convention, and what is saved of
//! each view: intrinsics and the world-to-camera transform in OpenCV's convention.
//!
//! World coordinates are Blender's: Z up (glTF's Y-up models are turned as Blender's
//! importer turns them). A camera at azimuth `a` and polar angle `p` (from +Z; elevation is
//! 90° − p) sits at `(d sin p cos a, d sin p sin a, d cos p)` and looks at the origin with
//! world +Z up in the image, as Blender's "track to" does.

use serde::Serialize;

/// One view: where the camera is and how wide it sees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewSpec {
    /// Degrees, counter-clockwise from +X seen from above.
    pub azimuth: f64,
    /// Degrees from +Z (the study's convention): 0 looks straight down, 90 level.
    pub polar: f64,
    pub distance: f64,
    /// Horizontal (and, images being square, vertical) field of view, degrees.
    pub fov: f64,
}

/// A number as an id part: at most 4 decimals, no trailing zeros, no `-0`.
fn num(x: f64) -> String {
    let r = (x * 10_000.0).round() / 10_000.0;
    let r = if r == 0.0 { 0.0 } else { r };
    let s = format!("{r:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl ViewSpec {
    pub fn elevation(&self) -> f64 {
        90.0 - self.polar
    }

    /// The view's stable id, from its spec alone: `az030-pol050-d1.5-fov49.1311`. Reordering
    /// or extending an angle list keeps every existing id.
    pub fn id(&self) -> String {
        format!(
            "az{:0>3}-pol{:0>3}-d{}-fov{}",
            num(self.azimuth),
            num(self.polar),
            num(self.distance),
            num(self.fov)
        )
    }

    /// The spec of a view id made by [`ViewSpec::id`]; `None` for other ids.
    pub fn parse_id(id: &str) -> Option<ViewSpec> {
        let rest = id.strip_prefix("az")?;
        let (azimuth, rest) = rest.split_once("-pol")?;
        let (polar, rest) = rest.split_once("-d")?;
        let (distance, fov) = rest.split_once("-fov")?;
        Some(ViewSpec {
            azimuth: azimuth.parse().ok()?,
            polar: polar.parse().ok()?,
            distance: distance.parse().ok()?,
            fov: fov.parse().ok()?,
        })
    }

    /// The camera centre in world coordinates.
    pub fn position(&self) -> [f64; 3] {
        let (a, p, d) = (
            self.azimuth.to_radians(),
            self.polar.to_radians(),
            self.distance,
        );
        [d * p.sin() * a.cos(), d * p.sin() * a.sin(), d * p.cos()]
    }

    /// The camera's axes in world coordinates, Blender's convention: right, up, and
    /// backward (the camera looks down its −Z).
    pub fn axes(&self) -> [[f64; 3]; 3] {
        let a = self.azimuth.to_radians();
        let c = self.position();
        let len = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        let back = [c[0] / len, c[1] / len, c[2] / len];
        // forward × world up, normalised; written out so it stays defined straight above
        // the object (polar 0), where that product vanishes.
        let right = [-a.sin(), a.cos(), 0.0];
        let up = cross(back, right);
        [right, up, back]
    }

    /// The 4x4 world-to-camera matrix in OpenCV's convention (x right, y down, z forward).
    pub fn world_to_camera_opencv(&self) -> [[f64; 4]; 4] {
        let [right, up, back] = self.axes();
        let rows = [right, neg(up), neg(back)];
        let c = self.position();
        let mut m = [[0.0; 4]; 4];
        for (i, row) in rows.iter().enumerate() {
            m[i][..3].copy_from_slice(row);
            m[i][3] = -dot(*row, c);
        }
        m[3][3] = 1.0;
        m
    }

    /// Intrinsics for a square image of `size` pixels: `[[f, 0, c], [0, f, c], [0, 0, 1]]`,
    /// pixel centres at half-integers (the top-left pixel covers [0, 1) x [0, 1)).
    pub fn intrinsics(&self, size: u32) -> [[f64; 3]; 3] {
        let half = size as f64 / 2.0;
        let f = half / (self.fov.to_radians() / 2.0).tan();
        [[f, 0.0, half], [0.0, f, half], [0.0, 0.0, 1.0]]
    }

    /// Where a world point lands in the image (pixels, OpenCV convention), and its depth.
    pub fn project(&self, size: u32, p: [f64; 3]) -> ([f64; 2], f64) {
        let m = self.world_to_camera_opencv();
        let k = self.intrinsics(size);
        let x = dot([m[0][0], m[0][1], m[0][2]], p) + m[0][3];
        let y = dot([m[1][0], m[1][1], m[1][2]], p) + m[1][3];
        let z = dot([m[2][0], m[2][1], m[2][2]], p) + m[2][3];
        ([k[0][0] * x / z + k[0][2], k[1][1] * y / z + k[1][2]], z)
    }

    /// What is written next to each rendered image.
    pub fn record(&self, size: u32) -> CameraRecord {
        CameraRecord {
            id: self.id(),
            azimuth: self.azimuth,
            elevation: self.elevation(),
            polar: self.polar,
            distance: self.distance,
            fov: self.fov,
            width: size,
            height: size,
            k: self.intrinsics(size),
            world_to_camera: self.world_to_camera_opencv(),
            convention: "OpenCV: x right, y down, z forward; world Z up (Blender); \
                         K in pixels with pixel centres at half-integers",
        }
    }
}

/// The camera JSON of a view.
#[derive(Clone, Debug, Serialize)]
pub struct CameraRecord {
    pub id: String,
    pub azimuth: f64,
    pub elevation: f64,
    pub polar: f64,
    pub distance: f64,
    pub fov: f64,
    pub width: u32,
    pub height: u32,
    #[serde(rename = "K")]
    pub k: [[f64; 3]; 3],
    pub world_to_camera: [[f64; 4]; 4],
    pub convention: &'static str,
}

pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn neg(a: [f64; 3]) -> [f64; 3] {
    [-a[0], -a[1], -a[2]]
}

/// The study's field of view: a 35 mm lens on a 32 mm sensor.
pub fn study_fov() -> f64 {
    2.0 * (16.0f64 / 35.0).atan().to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(azimuth: f64, polar: f64) -> ViewSpec {
        ViewSpec {
            azimuth,
            polar,
            distance: 1.5,
            fov: study_fov(),
        }
    }

    #[test]
    fn the_origin_projects_to_the_image_centre() {
        for (a, p) in [
            (0.0, 20.0),
            (30.0, 50.0),
            (330.0, 80.0),
            (90.0, 0.0),
            (45.0, 170.0),
        ] {
            let ([u, v], z) = view(a, p).project(224, [0.0, 0.0, 0.0]);
            assert!(
                (u - 112.0).abs() < 1e-9 && (v - 112.0).abs() < 1e-9,
                "{a} {p}"
            );
            assert!((z - 1.5).abs() < 1e-9);
        }
    }

    #[test]
    fn world_up_is_image_up_and_right_is_right() {
        // From +X at the horizon, +Z is up in the image (smaller v) and +Y is to the right.
        let v = view(0.0, 90.0);
        let (up, _) = v.project(224, [0.0, 0.0, 0.3]);
        let (right, _) = v.project(224, [0.0, 0.3, 0.0]);
        assert!(up[1] < 112.0 && (up[0] - 112.0).abs() < 1e-9);
        assert!(right[0] > 112.0 && (right[1] - 112.0).abs() < 1e-9);
    }

    #[test]
    fn ids_come_from_the_spec() {
        assert_eq!(view(30.0, 50.0).id(), "az030-pol050-d1.5-fov49.1343");
        assert_eq!(view(7.5, 0.0).id(), "az7.5-pol000-d1.5-fov49.1343");
        assert!((study_fov() - 49.1343).abs() < 1e-4);
    }
}
