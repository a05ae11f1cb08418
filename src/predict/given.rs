//! Face boxes the user gives: `--box` (once for all images, or once per image) and `--boxes
//! FILE.csv` (`image,x1,y1,x2,y2` rows), looked up by image path.

use super::boxes::FaceBox;
use super::inputs::normalised;
use crate::data::image::box_misses_image;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Boxes per image: one box for every image (`--box` once), or looked up by path (`--box` per
/// image, `--boxes FILE.csv`).
#[derive(Debug, Default)]
pub struct GivenBoxes {
    for_all: Option<FaceBox>,
    /// Normalised path → boxes with their 1-based line in the file (0 for `--box`), in file order.
    by_path: HashMap<PathBuf, Vec<(FaceBox, usize)>>,
    /// File name → the distinct paths of rows with that name (for the fallback match).
    by_name: HashMap<String, Vec<PathBuf>>,
    /// Where the boxes came from, for messages.
    source: String,
}

fn file_name_of(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

impl GivenBoxes {
    /// The same box for every image.
    pub fn same_for_all(b: FaceBox) -> GivenBoxes {
        GivenBoxes { for_all: Some(b), source: "--box".into(), ..Default::default() }
    }

    /// One box per image path.
    pub fn per_image(pairs: &[(PathBuf, FaceBox)]) -> GivenBoxes {
        let mut g = GivenBoxes { source: "--box".into(), ..Default::default() };
        for (p, b) in pairs {
            g.add(p, *b, 0);
        }
        g
    }

    fn add(&mut self, path: &Path, b: FaceBox, line: usize) {
        let key = normalised(path);
        if !self.by_path.contains_key(&key) {
            if let Some(name) = file_name_of(&key) {
                self.by_name.entry(name).or_default().push(key.clone());
            }
        }
        self.by_path.entry(key).or_default().push((b, line));
    }

    /// Reads `image,x1,y1,x2,y2` rows (further columns are ignored, several rows per image allowed;
    /// a first line whose box fields are not numbers is a header). Bad rows: a one-line error
    /// naming `file:line`.
    pub fn from_csv(path: &Path) -> Result<GivenBoxes> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --boxes {}", path.display()))?;
        let source = path.display().to_string();
        let mut g = GivenBoxes { source: source.clone(), ..Default::default() };
        for row in crate::io::csv::records(&text, &source) {
            let (line_no, f) = row?;
            let at = || format!("{}:{line_no}", path.display());
            let nums: Vec<Option<f64>> = f.iter().skip(1).take(4).map(|t| t.trim().parse::<f64>().ok()).collect();
            if line_no == 1 && nums.iter().all(Option::is_none) {
                continue; // header
            }
            if f.len() < 5 {
                bail!("{}: {} fields, expected image,x1,y1,x2,y2", at(), f.len());
            }
            let image = f[0].trim();
            if image.is_empty() {
                bail!("{}: empty image field", at());
            }
            let v: Vec<f64> = nums
                .iter()
                .zip(&f[1..5])
                .map(|(n, t)| n.ok_or_else(|| anyhow!("{}: '{}' is not a number", at(), t.trim())))
                .collect::<Result<_>>()?;
            let b = FaceBox::new(v[0], v[1], v[2], v[3]).map_err(|e| anyhow!("{}: box {v:?}: {e}", at()))?;
            g.add(Path::new(image), b, line_no);
        }
        Ok(g)
    }

    /// The boxes of `image`, whose pixels are `size` = [width, height]: rows whose image field
    /// equals its path as listed (`./` ignored), else rows whose image field has its file name
    /// when only one path in the file does. A box entirely outside the image is an error naming
    /// its `file:line` (a box partly outside is fine: the crop pads, as the reference does).
    pub fn for_image(&self, image: &Path, size: [usize; 2]) -> Result<Vec<FaceBox>> {
        let located = match self.for_all {
            Some(b) => vec![(b, 0)],
            None => self.rows_for(image)?,
        };
        for (b, line) in &located {
            if box_misses_image(b.corners(), size) {
                let at = if *line == 0 { self.source.clone() } else { format!("{}:{line}", self.source) };
                bail!("{at}: box {:?} lies entirely outside the {}x{} image", b.corners(), size[0], size[1]);
            }
        }
        Ok(located.into_iter().map(|(b, _)| b).collect())
    }

    fn rows_for(&self, image: &Path) -> Result<Vec<(FaceBox, usize)>> {
        let key = normalised(image);
        if let Some(v) = self.by_path.get(&key) {
            return Ok(v.clone());
        }
        let Some(name) = file_name_of(&key) else { return Ok(Vec::new()) };
        match self.by_name.get(&name).map(Vec::as_slice) {
            None | Some([]) => Ok(Vec::new()),
            Some([one]) => Ok(self.by_path[one].clone()),
            Some(many) => bail!(
                "{} names {} different images called {name} ({}); give the path as listed",
                self.source,
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Image fields of the file that match none of `images` (for a warning).
    pub fn unmatched(&self, images: &[PathBuf]) -> Vec<PathBuf> {
        if self.for_all.is_some() {
            return Vec::new();
        }
        let keys: HashSet<PathBuf> = images.iter().map(|p| normalised(p)).collect();
        let names: HashSet<String> = keys.iter().filter_map(|p| file_name_of(p)).collect();
        let mut out: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|k| !keys.contains(*k) && !file_name_of(k).is_some_and(|n| names.contains(&n)))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxes_from(tag: &str, text: &str) -> (PathBuf, Result<GivenBoxes>) {
        let path = std::env::temp_dir().join(format!("hrk-given-{tag}-{}.csv", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let got = GivenBoxes::from_csv(&path);
        std::fs::remove_file(&path).unwrap();
        (path, got)
    }

    #[test]
    fn csv_rows_split_with_quotes() {
        let (_, g) = boxes_from("quoted", "image,x1,y1,x2,y2\r\n\"a,b.jpg\",1,2,30,40\r\n");
        let g = g.unwrap();
        assert_eq!(g.for_image(Path::new("a,b.jpg"), [50, 50]).unwrap(), [FaceBox::new(1.0, 2.0, 30.0, 40.0).unwrap()]);
        // Partly outside is a face; entirely outside is an error naming the row.
        assert!(g.for_image(Path::new("a,b.jpg"), [10, 10]).is_ok());
        let e = g.for_image(Path::new("a,b.jpg"), [1, 1]).unwrap_err().to_string();
        assert!(e.ends_with(".csv:2: box [1.0, 2.0, 30.0, 40.0] lies entirely outside the 1x1 image"), "{e}");
    }

    /// An unterminated quote was once read as a field running to the end of the line.
    #[test]
    fn unterminated_quote_is_a_one_line_error_naming_file_and_line() {
        let (path, g) = boxes_from("open-quote", "a.jpg,1,2,30,40\n\"b.jpg,1,2,30,40\n");
        let e = format!("{:#}", g.unwrap_err());
        assert_eq!(e, format!("{}:2: unterminated quoted field", path.display()));
    }
}
