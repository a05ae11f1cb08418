//! Builders shared by the hostile-input tests: hand-made checkpoints, PNG headers, tiny
//! CSV datasets and COFW .mat files. Each test file uses part of it.

use std::io::Write;
use std::path::Path;

// ---- pickle / .pth -------------------------------------------------------------------------

/// Minimal protocol-2 pickle writer: just the opcodes a torch state_dict uses.
#[derive(Default)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// Any non-negative integer: BININT below 2^31, LONG1 above.
    pub fn int(&mut self, v: u64) -> &mut Self {
        if v < 1 << 31 {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            let mut b = v.to_le_bytes().to_vec();
            while b.len() > 1 && b[b.len() - 1] == 0 && b[b.len() - 2] & 0x80 == 0 {
                b.pop();
            }
            if b[b.len() - 1] & 0x80 != 0 {
                b.push(0);
            }
            self.0.push(0x8a);
            self.0.push(b.len() as u8);
            self.0.extend_from_slice(&b);
        }
        self
    }
    pub fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn ints_tuple(&mut self, v: &[u64]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    pub fn finish(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        std::mem::take(&mut self.0)
    }
}

/// One tensor entry of a hand-made checkpoint: name, shape, storage key, storage element count.
pub struct PthTensor<'a> {
    pub name: &'a str,
    pub shape: Vec<u64>,
    pub storage_key: String,
    pub storage_numel: u64,
}

/// The data.pkl of an official-style state_dict (OrderedDict of `_rebuild_tensor_v2` calls on
/// FloatStorage persistent ids), contiguous strides.
pub fn state_dict_pickle(tensors: &[PthTensor]) -> Vec<u8> {
    let mut p = Pickle::new();
    p.global("collections", "OrderedDict").op(b")R");
    for t in tensors {
        let mut stride = vec![1u64; t.shape.len()];
        for i in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1].saturating_mul(t.shape[i + 1]);
        }
        p.str(t.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b"((")
            .str("storage")
            .global("torch", "FloatStorage")
            .str(&t.storage_key)
            .str("cpu")
            .int(t.storage_numel)
            .op(b"tQ");
        p.int(0).ints_tuple(&t.shape).ints_tuple(&stride).op(b"\x89");
        p.global("collections", "OrderedDict").op(b")R");
        p.op(b"tRs");
    }
    p.finish()
}

/// A zip-format .pth (torch ≥ 1.6 layout) from a data.pkl and storage records.
pub fn zip_pth(pkl: &[u8], storages: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pkl).unwrap();
    for (k, data) in storages {
        w.start_file(format!("archive/data/{k}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.start_file("archive/version", opts).unwrap();
    w.write_all(b"3\n").unwrap();
    w.finish().unwrap();
    out.into_inner()
}

/// A whole state dict as a zip .pth (one FloatStorage per tensor).
pub fn state_dict_to_pth(entries: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let tensors: Vec<PthTensor> = entries
        .iter()
        .enumerate()
        .map(|(i, (n, s, d))| PthTensor {
            name: n,
            shape: s.iter().map(|&x| x as u64).collect(),
            storage_key: i.to_string(),
            storage_numel: d.len() as u64,
        })
        .collect();
    let storages = entries
        .iter()
        .enumerate()
        .map(|(i, (_, _, d))| (i.to_string(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect::<Vec<_>>();
    zip_pth(&state_dict_pickle(&tensors), &storages)
}

/// A safetensors file from a raw JSON header and data bytes.
pub fn safetensors_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

// ---- images ----------------------------------------------------------------------------------

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose (valid, CRC-correct) header claims `w`×`h` RGB pixels, followed by a tiny
/// IDAT: what a decompression-bomb or a lying file looks like.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A baseline JPEG SOF0 header claiming `w`×`h`, no scan data.
pub fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 8];
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]);
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

/// A smooth RGB test picture.
pub fn picture(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 7 + y * 3 + seed * 11) % 256) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x * y + seed) % 253) as u8,
        ])
    })
}

pub fn png_bytes(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut c = std::io::Cursor::new(Vec::new());
    picture(w, h, seed).write_to(&mut c, image::ImageFormat::Png).unwrap();
    c.into_inner()
}

pub fn jpeg_bytes(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut c = std::io::Cursor::new(Vec::new());
    picture(w, h, seed).write_to(&mut c, image::ImageFormat::Jpeg).unwrap();
    c.into_inner()
}

// ---- CSV datasets ----------------------------------------------------------------------------

/// Landmark count of the tiny 300W-layout CSVs.
pub const TINY_JOINTS: usize = 5;

pub fn csv_header(joints: usize) -> String {
    let mut s = String::from("image_name,scale,center_w,center_h");
    for i in 0..joints {
        s += &format!(",original_{i}_x,original_{i}_y");
    }
    s
}

pub fn csv_row(image: &str, joints: usize) -> String {
    let mut s = format!("{image},0.2,20.0,16.0");
    for j in 0..joints {
        s += &format!(",{},{}", 12.0 + 3.0 * j as f64, 10.0 + 2.5 * j as f64);
    }
    s
}

/// A `DatasetSpec` for the tiny CSVs: 300W layout, 5 landmarks, small crops (fast).
pub fn tiny_dataset_spec(root: &Path, csv: &Path, is_train: bool) -> hrk::data::dataset::DatasetSpec {
    let mut spec = hrk::data::dataset::DatasetSpec::new(hrk::config::DatasetKind::W300, root, csv, is_train);
    spec.num_joints = TINY_JOINTS;
    spec.image_size = [32, 32];
    spec.heatmap_size = [8, 8];
    spec.flip = false;
    spec
}

// ---- COFW .mat ------------------------------------------------------------------------------

/// A MATLAB v7.3 COFW-style file: a cell array of uint8 images (MATLAB dims H×W[×3],
/// column-major) and an N×cols double matrix.
pub fn cofw_mat_bytes(
    img_var: &str, phis_var: &str, images: &[(usize, usize, usize)], phis_cols: usize, dir: &Path,
) -> Vec<u8> {
    use hdf5_pure::mat::{options::Options, MatBuilder};
    let mut mb = MatBuilder::new(Options::default());
    mb.cell(img_var, &[images.len(), 1], |cw| {
        for &(h, w, c) in images {
            let data: Vec<u8> = (0..h * w * c).map(|k| (k * 37 % 251) as u8).collect();
            if c == 1 {
                cw.push_u8(&[h, w], &data)?;
            } else {
                cw.push_u8(&[h, w, c], &data)?;
            }
        }
        Ok(())
    })
    .unwrap();
    let n = images.len().max(1);
    let colmajor: Vec<f64> = (0..n * phis_cols).map(|k| 2.0 + (k % 13) as f64).collect();
    mb.write_f64(phis_var, &[n, phis_cols], &colmajor).unwrap();
    let p = dir.join(format!("tmp-{img_var}-{phis_var}-{}.mat", images.len()));
    mb.write(&p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let _ = std::fs::remove_file(&p);
    bytes
}
