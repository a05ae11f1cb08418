//! WFLW-style annotation CSVs of random faces, for the loader tests and examples/loader_speed.rs (which
//! includes this file by path: it sees nothing else of `common`).

use hrk::rng::Rng;

/// Where the random faces go: every `corner_every`-th face's center is drawn from `corner` (x range,
/// y range), the others' from `inside`; sides from `side`; faces cycle over `images` pictures
/// `img{k}.jpg`.
pub struct FaceLayout {
    pub images: usize,
    pub corner_every: usize,
    pub corner: [(f64, f64); 2],
    pub inside: [(f64, f64); 2],
    pub side: (f64, f64),
}

/// The CSV text: header, then `n` rows of image, scale (side / 200), center and 98 points spread over
/// the face's square.
pub fn wflw_csv(rng: &mut Rng, n: usize, layout: &FaceLayout) -> String {
    let mut csv = String::from("image_name,scale,center_w,center_h");
    for j in 0..98 {
        csv += &format!(",x{j},y{j}");
    }
    csv.push('\n');
    for i in 0..n {
        let [(x0, x1), (y0, y1)] = if i % layout.corner_every == 0 { layout.corner } else { layout.inside };
        let (cx, cy) = (rng.range(x0, x1), rng.range(y0, y1));
        let side = rng.range(layout.side.0, layout.side.1);
        csv += &format!("img{}.jpg,{},{cx},{cy}", i % layout.images, side / 200.0);
        for _ in 0..98 {
            csv += &format!(",{},{}", cx + rng.range(-side / 2.0, side / 2.0), cy + rng.range(-side / 2.0, side / 2.0));
        }
        csv.push('\n');
    }
    csv
}
