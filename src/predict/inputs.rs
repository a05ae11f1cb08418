//! The still images of a run: files and folders → one list (folders walked recursively), every
//! n-th of it for `--shard i/n`, and an output name per image.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// File extensions taken from folders (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "ppm", "pgm", "bmp"];

/// `p` without `.` components (so `./a.jpg` and `a.jpg` are the same image).
pub(super) fn normalised(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// An image or a video (a video fails in one line where this hrk is built without video).
fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
        || crate::video::is_video_path(p)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("cannot list folder {}", dir.display()))?;
    let mut entries: Vec<(PathBuf, bool)> = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot list folder {}", dir.display()))?;
        let path = e.path();
        // Symlinked folders are not entered (no loops); symlinked files are taken.
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        entries.push((path, is_dir));
    }
    entries.sort();
    for (path, is_dir) in entries {
        if is_dir {
            walk(&path, out)?;
        } else if has_image_extension(&path) && (path.is_file() || crate::input_file::is_broken_link(&path)) {
            // A dangling link or a loop is kept, so that reading it reports a failed image (not a silent skip).
            out.push(path);
        }
    }
    Ok(())
}

/// The images of the arguments, in argument order: a file is taken as given (whatever its
/// extension), a folder contributes every file with an image or video extension below it, recursively,
/// sorted by path (a dangling symlink or symlink loop with an image extension included, to fail
/// when read). A path listed twice is kept once. A missing argument is an error; any other
/// argument that is not a folder (a FIFO, a device, a broken link) is an image, which fails when
/// read if it holds none.
pub fn collect_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    use crate::input_file::{classify, InputKind};
    let mut out = Vec::new();
    for a in args {
        match classify(a) {
            InputKind::Directory => walk(a, &mut out)?,
            InputKind::Missing => bail!("image {} not found", a.display()),
            _ => out.push(a.clone()),
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(normalised(p)));
    Ok(out)
}

/// Parses `--shard i/n` (0 ≤ i < n).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow!("--shard '{s}': expected i/n with 0 <= i < n (e.g. 0/4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The positions `shard.0, shard.0 + n, …` of a list of `len` items: every n-th image.
pub fn shard_indices(len: usize, shard: (usize, usize)) -> Vec<usize> {
    (shard.0..len).step_by(shard.1.max(1)).collect()
}

/// The path flattened into one file name: components joined by `__`, `..` as `up`, the root
/// and `.` dropped.
fn flattened(p: &Path) -> String {
    let parts: Vec<String> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("up".into()),
            _ => None,
        })
        .collect();
    parts.join("__")
}

/// Output names (without extension) for a list of images: the file stem (`photo.jpg` →
/// `photo`), unless several images of the list share that stem; those are named by their path
/// as listed, flattened (`a/photo.jpg` → `a__photo.jpg`). A name still shared gets `~2`, `~3`, …
/// in list order. The names depend on the whole (unsharded) list only, so every shard of a
/// `--shard` job array names an image the same way.
pub fn output_names(images: &[PathBuf]) -> Vec<String> {
    let stem = |p: &PathBuf| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let mut stem_count: HashMap<String, usize> = HashMap::new();
    for p in images {
        *stem_count.entry(stem(p)).or_default() += 1;
    }
    let mut names: Vec<String> =
        images.iter().map(|p| if stem_count[&stem(p)] > 1 { flattened(p) } else { stem(p) }).collect();
    let mut used: HashMap<String, usize> = HashMap::new();
    for n in names.iter_mut() {
        let k = used.entry(n.clone()).or_default();
        *k += 1;
        if *k > 1 {
            *n = format!("{n}~{k}");
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stems_unless_shared() {
        let p = |s: &str| PathBuf::from(s);
        let names = output_names(&[p("a/x.jpg"), p("b/x.jpg"), p("a/y.png"), p("./c/x.png"), p("a__x.jpg.png")]);
        assert_eq!(names, ["a__x.jpg", "b__x.jpg", "y", "c__x.png", "a__x.jpg~2"]);
    }

    #[test]
    fn shards_cover_every_index_once() {
        for n in 1..5 {
            let mut all: Vec<usize> = (0..n).flat_map(|i| shard_indices(11, (i, n))).collect();
            all.sort();
            assert_eq!(all, (0..11).collect::<Vec<_>>());
        }
        assert_eq!(parse_shard("1/3").unwrap(), (1, 3));
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(parse_shard(bad).unwrap_err().to_string().contains("--shard"));
        }
    }
}
