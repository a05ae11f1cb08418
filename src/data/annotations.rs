//! `hrk annotations`: other annotation formats → the official WFLW/300W CSV
//! (`image,scale,center_w,center_h,x0,y0,...`). The official center/scale convention (the tight
//! landmark box, HRNet-Facial-Landmark-Detection issue #3): for a face box (x1, y1, x2, y2),
//! `center = ((x1+x2)/2, (y1+y2)/2)` and `scale = max(x2−x1, y2−y1) / 200`. Without a box, the
//! tight landmark box with the COFW rounding rule `(floor(min x), floor(min y), ceil(max x),
//! ceil(max y))` is used, which gives the .0/.5 centres and whole-pixel sides of the published
//! CSVs.

use super::image::MAX_BOX_COORDINATE;
use anyhow::{anyhow, bail, Context, Result};
use std::fmt::Write as _;

/// One face in the official CSV layout.
#[derive(Clone, Debug, PartialEq)]
pub struct OfficialRow {
    pub image: String,
    pub center: [f64; 2],
    pub scale: f64,
    /// Landmarks (x, y); a missing one is written as (-1, -1), which the datasets skip (y <= 0).
    pub pts: Vec<[f64; 2]>,
}

/// Center and scale of a face box `[x1, y1, x2, y2]` (the official convention).
pub fn box_center_scale(b: [f64; 4]) -> ([f64; 2], f64) {
    ([(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0], (b[2] - b[0]).max(b[3] - b[1]) / 200.0)
}

/// The tight landmark box with the COFW rounding rule; points with y <= 0 (missing) are ignored.
pub fn landmark_box(pts: &[[f64; 2]]) -> Option<[f64; 4]> {
    let present: Vec<&[f64; 2]> = pts.iter().filter(|p| p[1] > 0.0).collect();
    if present.is_empty() {
        return None;
    }
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for p in present {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    Some([lo[0].floor(), lo[1].floor(), hi[0].ceil(), hi[1].ceil()])
}

/// Where a row's box comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxSource {
    /// The input's face box (COCO `bbox`, the CSV's x1,y1,x2,y2).
    Given,
    /// The tight landmark box (what the official CSVs use).
    Landmarks,
}

fn row(image: String, given: [f64; 4], pts: Vec<[f64; 2]>, src: BoxSource, what: &str) -> Result<OfficialRow> {
    let b = match src {
        BoxSource::Given => given,
        BoxSource::Landmarks => landmark_box(&pts).ok_or_else(|| anyhow!("{what}: no visible landmark"))?,
    };
    if !b.iter().all(|v| v.is_finite()) || b[2] <= b[0] || b[3] <= b[1] {
        bail!("{what}: face box {b:?} is empty or not finite (need x2 > x1, y2 > y1)");
    }
    if !b.iter().all(|v| v.abs() <= MAX_BOX_COORDINATE) {
        bail!("{what}: face box {b:?} reaches beyond ±{MAX_BOX_COORDINATE} pixels");
    }
    if b[2] <= 0.0 || b[3] <= 0.0 {
        bail!("{what}: face box {b:?} lies entirely outside the image (left of or above it)");
    }
    if let Some(k) = pts.iter().position(|p| !(p[0].is_finite() && p[1].is_finite())) {
        bail!("{what}: landmark {k} {:?} is not finite", pts[k]);
    }
    let (center, scale) = box_center_scale(b);
    Ok(OfficialRow { image, center, scale, pts })
}

/// COCO keypoints JSON: `images[{id, file_name}]`, `annotations[{image_id, bbox: [x, y, w, h],
/// keypoints: [x, y, v, ...]}]`; keypoints with v = 0 are missing, v = 1 and 2 present, any other
/// v refused. An annotation without `bbox` takes the tight landmark box (one warning with the count).
pub fn from_coco(text: &str, source: &str) -> Result<Vec<OfficialRow>> {
    let v: serde_json::Value = serde_json::from_str(text).with_context(|| format!("{source}: not valid JSON"))?;
    let images = v["images"].as_array().ok_or_else(|| anyhow!("{source}: no 'images' array"))?;
    // id → (index in 'images', file name); a repeated id would file one image's faces under the other.
    let mut names = std::collections::HashMap::new();
    for (i, im) in images.iter().enumerate() {
        let id = im["id"].as_i64().ok_or_else(|| anyhow!("{source}: images[{i}].id is not an integer"))?;
        let name =
            im["file_name"].as_str().ok_or_else(|| anyhow!("{source}: images[{i}].file_name is not a string"))?;
        if let Some((first, first_name)) = names.insert(id, (i, name.to_string())) {
            bail!("{source}: images[{first}] ({first_name}) and images[{i}] ({name}) share the id {id}; image ids must be unique");
        }
    }
    let anns = v["annotations"].as_array().ok_or_else(|| anyhow!("{source}: no 'annotations' array"))?;
    let mut rows = Vec::with_capacity(anns.len());
    let mut joints = None;
    let mut without_bbox = 0usize;
    for (i, a) in anns.iter().enumerate() {
        let what = match &a["id"] {
            serde_json::Value::Null => format!("{source}: annotations[{i}]"),
            id => format!("{source}: annotations[{i}] (id {id})"),
        };
        let id = a["image_id"].as_i64().ok_or_else(|| anyhow!("{what}.image_id is not an integer"))?;
        let image =
            names.get(&id).ok_or_else(|| anyhow!("{what}: image_id {id} names no entry of 'images'"))?.1.clone();
        let nums = |key: &str| -> Result<Vec<f64>> {
            a[key]
                .as_array()
                .ok_or_else(|| anyhow!("{what}.{key} is not an array"))?
                .iter()
                .map(|x| x.as_f64().ok_or_else(|| anyhow!("{what}.{key} has a non-number")))
                .collect()
        };
        let kp = nums("keypoints")?;
        if kp.is_empty() || !kp.len().is_multiple_of(3) {
            bail!("{what}.keypoints: {} values, expected x,y,v triples", kp.len());
        }
        if *joints.get_or_insert(kp.len() / 3) != kp.len() / 3 {
            bail!("{what}.keypoints: {} points, earlier annotations have {}", kp.len() / 3, joints.unwrap_or(0));
        }
        if let Some(k) = kp.chunks_exact(3).position(|t| ![0.0, 1.0, 2.0].contains(&t[2])) {
            bail!("{what}.keypoints: point {k} has visibility {}, expected 0, 1 or 2", kp[3 * k + 2]);
        }
        let pts: Vec<[f64; 2]> =
            kp.chunks_exact(3).map(|t| if t[2] > 0.0 { [t[0], t[1]] } else { [-1.0, -1.0] }).collect();
        let (given, src) = match nums("bbox") {
            Ok(b) if b.len() == 4 => ([b[0], b[1], b[0] + b[2], b[1] + b[3]], BoxSource::Given),
            Ok(b) => bail!("{what}.bbox: {} values, expected [x, y, w, h]", b.len()),
            Err(_) if a.get("bbox").is_none() => {
                without_bbox += 1;
                ([0.0; 4], BoxSource::Landmarks)
            }
            Err(e) => return Err(e),
        };
        rows.push(row(image, given, pts, src, &what)?);
    }
    if without_bbox > 0 {
        log::warn!(
            "{source}: {without_bbox} of {} annotations have no bbox; their face box is the tight box of their visible landmarks",
            anns.len()
        );
    }
    Ok(rows)
}

/// A simple CSV `image,x1,y1,x2,y2,x0,y0,x1,y1,...` (a header line is skipped when its second
/// field is not a number).
pub fn from_simple_csv(text: &str, source: &str) -> Result<Vec<OfficialRow>> {
    let mut rows = Vec::new();
    let mut joints = None;
    for record in crate::io::csv::records(text, source) {
        let (line_no, fields) = record?;
        let f: Vec<&str> = fields.iter().map(|s| s.trim()).collect();
        if line_no == 1 && f.get(1).is_some_and(|s| s.parse::<f64>().is_err()) {
            continue;
        }
        let what = format!("{source}:{line_no}");
        if f.len() < 7 || !(f.len() - 5).is_multiple_of(2) {
            bail!("{what}: {} fields, expected image,x1,y1,x2,y2 and x,y pairs", f.len());
        }
        let nums: Vec<f64> = f[1..]
            .iter()
            .enumerate()
            .map(|(k, s)| s.parse::<f64>().map_err(|_| anyhow!("{what}: field {} {s:?} is not a number", k + 2)))
            .collect::<Result<_>>()?;
        let pts: Vec<[f64; 2]> = nums[4..].chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        if *joints.get_or_insert(pts.len()) != pts.len() {
            bail!("{what}: {} landmarks, earlier rows have {}", pts.len(), joints.unwrap_or(0));
        }
        rows.push(row(f[0].to_string(), [nums[0], nums[1], nums[2], nums[3]], pts, BoxSource::Given, &what)?);
    }
    Ok(rows)
}

/// Recomputes every row's center/scale from its landmarks (`--box landmarks`).
pub fn use_landmark_boxes(rows: &mut [OfficialRow]) -> Result<()> {
    for r in rows.iter_mut() {
        let b = landmark_box(&r.pts).ok_or_else(|| anyhow!("{}: no visible landmark", r.image))?;
        (r.center, r.scale) = box_center_scale(b);
    }
    Ok(())
}

/// The official CSV header line for `joints` landmarks, without its newline:
/// `image_name,scale,center_w,center_h,original_0_x,original_0_y,...`.
pub fn official_csv_header(joints: usize) -> String {
    let mut s = String::from("image_name,scale,center_w,center_h");
    push_landmark_columns(&mut s, joints);
    s
}

/// Appends the official landmark column names `,original_k_x,original_k_y` for k < `joints`.
pub fn push_landmark_columns(s: &mut String, joints: usize) {
    for k in 0..joints {
        let _ = write!(s, ",original_{k}_x,original_{k}_y");
    }
}

/// The official CSV text (header as in the released files: `image_name,scale,center_w,center_h,
/// original_0_x,original_0_y,...`).
pub fn to_official_csv(rows: &[OfficialRow]) -> String {
    let joints = rows.first().map_or(0, |r| r.pts.len());
    let mut s = official_csv_header(joints);
    s.push('\n');
    for r in rows {
        let name = crate::io::csv::field(&r.image);
        let _ = write!(s, "{name},{},{},{}", r.scale, r.center[0], r.center[1]);
        for p in &r.pts {
            let _ = write!(s, ",{},{}", p[0], p[1]);
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_convention() {
        // The published 300W-style values: center (56.5, 101.5), scale 0.385 ← a 77-pixel box.
        let (c, s) = box_center_scale([18.0, 63.0, 95.0, 140.0]);
        assert_eq!(c, [56.5, 101.5]);
        assert!((s - 0.385).abs() < 1e-12);
        assert_eq!(landmark_box(&[[10.2, 20.7], [30.9, 25.1], [5.0, -1.0]]), Some([10.0, 20.0, 31.0, 26.0]));
        assert!(from_simple_csv("a.jpg,5,5,1,1,2,2", "x.csv").unwrap_err().to_string().contains("x.csv:1"));
    }

    #[test]
    fn simple_csv_with_a_byte_order_mark_converts_like_without() {
        let plain = "image,x1,y1,x2,y2,p0x,p0y,p1x,p1y\r\na.jpg,10,20,50,70,12,25,40,60\r\n";
        let with_bom = format!("\u{feff}{plain}");
        let want = from_simple_csv(plain, "x.csv").unwrap();
        assert_eq!(want.len(), 1);
        assert_eq!(from_simple_csv(&with_bom, "x.csv").unwrap(), want);
        // Header-less: the BOM must not glue itself to the first image name.
        let rows = from_simple_csv("\u{feff}a.jpg,10,20,50,70,12,25,40,60\n", "x.csv").unwrap();
        assert_eq!(rows[0].image, "a.jpg");
    }

    fn coco(images: &str, annotations: &str) -> Result<Vec<OfficialRow>> {
        let kp = "[12, 25, 2, 40, 60, 2]";
        let anns = annotations.replace("KP", kp);
        from_coco(&format!("{{\"images\": {images}, \"annotations\": {anns}}}"), "c.json")
    }

    #[test]
    fn coco_refuses_duplicate_image_ids_and_dangling_image_ids() {
        let anns = r#"[{"image_id": 1, "bbox": [10, 20, 40, 50], "keypoints": KP}]"#;
        let ok = coco(r#"[{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]"#, anns).unwrap();
        assert_eq!(ok[0].image, "a.jpg");
        let e = coco(r#"[{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]"#, anns).unwrap_err();
        let e = format!("{e:#}");
        assert!(!e.contains('\n'), "{e}");
        for part in ["c.json", "images[0] (a.jpg)", "images[1] (b.jpg)", "id 1"] {
            assert!(e.contains(part), "{e}");
        }
        let e = coco(r#"[{"id": 2, "file_name": "b.jpg"}]"#, anns).unwrap_err().to_string();
        assert!(e.contains("c.json: annotations[0]: image_id 1"), "{e}");
    }

    #[test]
    fn coco_refuses_visibility_outside_0_1_2_naming_the_annotation_id() {
        let images = r#"[{"id": 1, "file_name": "a.jpg"}]"#;
        let anns = r#"[{"id": 41, "image_id": 1, "bbox": [10, 20, 40, 50], "keypoints": [12, 25, 2, 40, 60, 3]}]"#;
        let e = format!("{:#}", coco(images, anns).unwrap_err());
        assert_eq!(e, "c.json: annotations[0] (id 41).keypoints: point 1 has visibility 3, expected 0, 1 or 2");
        let ok = r#"[{"id": 41, "image_id": 1, "bbox": [10, 20, 40, 50], "keypoints": [12, 25, 1, 40, 60, 0]}]"#;
        assert_eq!(coco(images, ok).unwrap()[0].pts, [[12.0, 25.0], [-1.0, -1.0]]);
    }

    #[test]
    fn boxes_at_1e30_left_of_the_image_or_with_nan_landmarks_are_refused() {
        let images = r#"[{"id": 1, "file_name": "a.jpg"}]"#;
        for (bbox, part) in [
            ("[0, 0, 1e30, 1e30]", "beyond"),
            ("[-500, -500, 100, 100]", "entirely outside"),
            ("[10, 20, 0, 50]", "empty"),
        ] {
            let anns = format!(r#"[{{"id": 7, "image_id": 1, "bbox": {bbox}, "keypoints": KP}}]"#);
            let e = format!("{:#}", coco(images, &anns).unwrap_err());
            assert!(e.starts_with("c.json: annotations[0] (id 7): face box") && e.contains(part), "{e}");
        }
        let e = from_simple_csv("a.jpg,10,20,50,70,12,NaN,40,60\n", "x.csv").unwrap_err().to_string();
        assert_eq!(e, "x.csv:1: landmark 0 [12.0, NaN] is not finite");
    }
}
