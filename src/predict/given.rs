//! Face boxes the user gives: `--box` (once for all images, or once per image) and `--boxes
//! FILE.csv` (`image,x1,y1,x2,y2` rows), looked up by image path.

use super::boxes::FaceBox;
use super::inputs::normalised;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Boxes per image: one box for every image (`--box` once), or looked up by path (`--box` per
/// image, `--boxes FILE.csv`).
#[derive(Debug, Default)]
pub struct GivenBoxes {
    for_all: Option<FaceBox>,
    /// Normalised path → boxes, in file order.
    by_path: HashMap<PathBuf, Vec<FaceBox>>,
    /// File name → the distinct paths of rows with that name (for the fallback match).
    by_name: HashMap<String, Vec<PathBuf>>,
    /// Where the boxes came from, for messages.
    source: String,
}

fn file_name_of(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Splits one CSV line into fields (double quotes around a field allowed, `""` inside them).
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    fields.push(cur);
    fields
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
            g.add(p, *b);
        }
        g
    }

    fn add(&mut self, path: &Path, b: FaceBox) {
        let key = normalised(path);
        if !self.by_path.contains_key(&key) {
            if let Some(name) = file_name_of(&key) {
                self.by_name.entry(name).or_default().push(key.clone());
            }
        }
        self.by_path.entry(key).or_default().push(b);
    }

    /// Reads `image,x1,y1,x2,y2` rows (further columns are ignored, several rows per image allowed;
    /// a first line whose box fields are not numbers is a header). Bad rows: a one-line error
    /// naming `file:line`.
    pub fn from_csv(path: &Path) -> Result<GivenBoxes> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --boxes {}", path.display()))?;
        let mut g = GivenBoxes { source: path.display().to_string(), ..Default::default() };
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{}:{}", path.display(), i + 1);
            if line.trim().is_empty() {
                continue;
            }
            let f = split_csv_line(line.trim_end_matches('\r'));
            let nums: Vec<Option<f64>> = f.iter().skip(1).take(4).map(|t| t.trim().parse::<f64>().ok()).collect();
            if i == 0 && nums.iter().all(Option::is_none) {
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
            g.add(Path::new(image), b);
        }
        Ok(g)
    }

    /// The boxes of `image`: rows whose image field equals its path as listed (`./` ignored),
    /// else rows whose image field has its file name when only one path in the file does.
    pub fn for_image(&self, image: &Path) -> Result<Vec<FaceBox>> {
        if let Some(b) = self.for_all {
            return Ok(vec![b]);
        }
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

    #[test]
    fn csv_lines_split_with_quotes() {
        assert_eq!(split_csv_line(r#""a,b.jpg",1,"2""x""#), ["a,b.jpg", "1", "2\"x"]);
    }
}
