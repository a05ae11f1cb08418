//! The library half of the hostile-input matrix (for inputs no finished subcommand reads yet):
//! a tiny CSV dataset through `FaceDataset::open` + `get`, images through `load_image`, COFW
//! .mat files through `read_cofw`, and weights against the model through
//! `cli::common::load_weights` (after `hrk convert` where the input is a .pth). Every error is
//! one line naming the file and the place.

mod common;

use common::hostile::*;
use common::{assert_one_line, s, scratch};
use hrk::config::DatasetKind;
use hrk::data::dataset::{DatasetSpec, FaceDataset};
use hrk::data::imageio::load_image;
use std::path::{Path, PathBuf};

fn err_text<T>(r: anyhow::Result<T>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => format!("{e:#}"),
    }
}

/// Opens the dataset and loads every sample, returning the first error.
fn open_and_load(spec: DatasetSpec) -> anyhow::Result<usize> {
    let ds = FaceDataset::open(spec)?;
    for i in 0..ds.len() {
        ds.get(i, 3, 0)?;
    }
    Ok(ds.len())
}

#[test]
fn csv_dataset_matrix() {
    let dir = scratch("hostile-lib-csv");
    std::fs::write(dir.join("a.png"), png_bytes(40, 32, 1)).unwrap();
    let j = TINY_JOINTS;
    let header = csv_header(j);
    let row = csv_row("a.png", j);
    // Positive control, also with CRLF line ends, a BOM and blank lines.
    let good = dir.join("good.csv");
    std::fs::write(&good, format!("\u{feff}{header}\r\n{row}\r\n\r\n{row}\r\n")).unwrap();
    assert_eq!(open_and_load(tiny_dataset_spec(&dir, &good, false)).unwrap(), 2);
    assert_eq!(open_and_load(tiny_dataset_spec(&dir, &good, true)).unwrap(), 2);

    let drop_last_col = |r: &str| r.rsplit_once(',').unwrap().0.to_string();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("empty.csv", vec![], vec!["empty file"]),
        ("header_only.csv", format!("{header}\n").into_bytes(), vec!["no data rows"]),
        ("missing_column.csv", format!("{header}\n{}\n", drop_last_col(&row)).into_bytes(), vec![":2:", "columns"]),
        (
            "missing_header_column.csv",
            format!("{}\n{row}\n", drop_last_col(&header)).into_bytes(),
            vec![":1:", "header"],
        ),
        ("extra_column.csv", format!("{header}\n{row}\n{row},7\n").into_bytes(), vec![":3:", "columns"]),
        ("extra_header_column.csv", format!("{header},comment\n{row}\n").into_bytes(), vec![":1:", "header"]),
        (
            "non_numeric.csv",
            format!("{header}\n{}\n", row.replacen(",12,", ",twelve,", 1)).into_bytes(),
            vec![":2:", "not a number", "original_0_x"],
        ),
        (
            "nan.csv",
            format!("{header}\n{}\n", row.replacen(",10,", ",NaN,", 1)).into_bytes(),
            vec![":2:", "original_0_y"],
        ),
        ("inf.csv", format!("{header}\n{}\n", row.replacen(",0.2,", ",inf,", 1)).into_bytes(), vec![":2:", "scale"]),
        (
            "zero_scale.csv",
            format!("{header}\n{}\n", row.replacen(",0.2,", ",0,", 1)).into_bytes(),
            vec![":2:", "scale"],
        ),
        (
            "empty_path.csv",
            format!("{header}\n{}\n", row.replacen("a.png", " ", 1)).into_bytes(),
            vec![":2:", "image path"],
        ),
        ("not_utf8.csv", [header.as_bytes(), b"\n\xff\xfe,1\n"].concat(), vec!["UTF-8"]),
        (
            "unterminated_quote.csv",
            format!("{header}\n\"a.png,{}\n", row.split_once(',').unwrap().1).into_bytes(),
            vec![":2:", "unterminated"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let f = dir.join(name);
        std::fs::write(&f, &bytes).unwrap();
        let msg = err_text(open_and_load(tiny_dataset_spec(&dir, &f, false)), name);
        let mut want = vec![s(&f)];
        want.extend(needles);
        assert_one_line(&msg, &want);
    }
    // A missing image, or a directory where the image should be: the message names the
    // image (the CSV line would help too; see the report).
    for (name, image) in [("missing_image.csv", "nope.png"), ("image_is_dir.csv", "sub")] {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let f = dir.join(name);
        std::fs::write(&f, format!("{header}\n{}\n", row.replacen("a.png", image, 1))).unwrap();
        let msg = err_text(open_and_load(tiny_dataset_spec(&dir, &f, false)), name);
        assert_one_line(&msg, &[s(&dir.join(image))]);
    }
    // Far-away landmarks and a huge box are not errors (the reference crops them); they must
    // not hang or allocate absurdly either.
    let far = dir.join("far.csv");
    let far_row = row.replacen(",0.2,", ",1e12,", 1).replacen(",12,", ",1e300,", 1);
    std::fs::write(&far, format!("{header}\n{far_row}\n")).unwrap();
    let started = std::time::Instant::now();
    let _ = open_and_load(tiny_dataset_spec(&dir, &far, true));
    let _ = open_and_load(tiny_dataset_spec(&dir, &far, false));
    assert!(started.elapsed().as_secs() < 10, "far-away coordinates took {:?}", started.elapsed());
    // The directory itself as annotation file.
    let msg = err_text(open_and_load(tiny_dataset_spec(&dir, &dir, false)), "dir");
    assert_one_line(&msg, &[s(&dir)]);
}

/// Broken images reached through a dataset: the message names the image and the CSV line.
#[test]
fn image_matrix_through_dataset() {
    let dir = scratch("hostile-lib-img");
    let png = png_bytes(40, 32, 2);
    let jpg = jpeg_bytes(40, 32, 2);
    let mut corrupt_jpg = jpg.clone();
    // Overwrite the middle of the entropy-coded data and the quantisation table's neighbourhood
    // with garbage, keeping SOI/EOI.
    let n = corrupt_jpg.len();
    for (k, b) in corrupt_jpg[20..n / 2].iter_mut().enumerate() {
        *b = (k * 131 % 256) as u8;
    }
    let mut corrupt_png = png.clone();
    let m = corrupt_png.len();
    corrupt_png[m / 2..m / 2 + 12].fill(0);
    let images: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("trunc.png", png[..png.len() / 2].to_vec(), vec![]),
        ("trunc_header.png", png[..20].to_vec(), vec![]),
        ("corrupt.png", corrupt_png, vec![]),
        ("trunc.jpg", jpg[..jpg.len() / 2].to_vec(), vec!["truncated"]),
        ("corrupt.jpg", corrupt_jpg, vec![]),
        ("empty.jpg", vec![], vec!["empty"]),
        ("text.png", b"not an image".to_vec(), vec!["format"]),
        ("huge.png", png_claiming(100_000, 100_000), vec!["100000x100000", "larger than supported"]),
        ("tall.png", png_claiming(1, 1 << 30), vec!["larger than supported"]),
        ("huge.jpg", jpeg_claiming(65_000, 65_000), vec![]),
        ("zero.png", png_claiming(0, 10), vec![]),
        (
            "huge.bmp",
            {
                let mut v = b"BM".to_vec();
                v.extend_from_slice(&[0; 8]);
                v.extend_from_slice(&54u32.to_le_bytes());
                v.extend_from_slice(&40u32.to_le_bytes());
                v.extend_from_slice(&60000i32.to_le_bytes());
                v.extend_from_slice(&60000i32.to_le_bytes());
                v.extend_from_slice(&[1, 0, 24, 0]);
                v.extend_from_slice(&[0; 24]);
                v
            },
            vec![],
        ),
        ("huge.ppm", b"P6\n99999999 99999999\n255\n\x00".to_vec(), vec!["larger than supported"]),
    ];
    let header = csv_header(TINY_JOINTS);
    for (name, bytes, needles) in images {
        let img = dir.join(name);
        std::fs::write(&img, &bytes).unwrap();
        // directly
        let started = std::time::Instant::now();
        let msg = err_text(load_image(&img), name);
        let mut want = vec![s(&img)];
        want.extend(needles.iter().copied());
        assert_one_line(&msg, &want);
        assert!(started.elapsed().as_secs() < 5, "{name}: took {:?}", started.elapsed());
        // through the dataset
        let csv = dir.join(format!("{name}.csv"));
        std::fs::write(&csv, format!("{header}\n{}\n", csv_row(name, TINY_JOINTS))).unwrap();
        let msg = err_text(open_and_load(tiny_dataset_spec(&dir, &csv, false)), name);
        assert_one_line(&msg, &want);
    }
}

// ---- COFW .mat -------------------------------------------------------------------------------

#[test]
fn cofw_mat_matrix() {
    let dir = scratch("hostile-lib-mat");
    let spec = |p: &Path| {
        let mut sp = DatasetSpec::new(DatasetKind::Cofw, dir.path(), p, false);
        sp.image_size = [32, 32];
        sp.heatmap_size = [8, 8];
        sp
    };
    let good = dir.join("good.mat");
    let good_bytes = cofw_mat_bytes("IsT", "phisT", &[(30, 24, 3), (20, 22, 1)], 87, &dir);
    std::fs::write(&good, &good_bytes).unwrap();
    assert_eq!(open_and_load(spec(&good)).unwrap(), 2);

    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("no_phis.mat", cofw_mat_bytes("IsT", "phisX", &[(30, 24, 3)], 87, &dir), vec!["phisT"]),
        ("no_images.mat", cofw_mat_bytes("IsX", "phisT", &[(30, 24, 3)], 87, &dir), vec!["IsT"]),
        ("train_vars.mat", cofw_mat_bytes("IsTr", "phisTr", &[(30, 24, 3)], 87, &dir), vec!["phisT"]),
        ("narrow_phis.mat", cofw_mat_bytes("IsT", "phisT", &[(30, 24, 3)], 40, &dir), vec!["phisT", "N×87"]),
        ("two_channel.mat", cofw_mat_bytes("IsT", "phisT", &[(30, 24, 2)], 87, &dir), vec!["IsT{1}"]),
        ("empty_image.mat", cofw_mat_bytes("IsT", "phisT", &[(0, 24, 1)], 87, &dir), vec![]),
        ("truncated.mat", good_bytes[..good_bytes.len() / 2].to_vec(), vec![]),
        ("truncated_head.mat", good_bytes[..600.min(good_bytes.len())].to_vec(), vec![]),
        ("not_hdf5.mat", b"MATLAB 5.0 MAT-file, Platform: GLNXA64".to_vec(), vec![]),
        ("empty.mat", vec![], vec![]),
    ];
    for (name, bytes, needles) in cases {
        let f = dir.join(name);
        std::fs::write(&f, &bytes).unwrap();
        let msg = err_text(open_and_load(spec(&f)), name);
        let mut want = vec![s(&f)];
        want.extend(needles);
        assert_one_line(&msg, &want);
    }
    // COFW with a config that asks for another landmark count.
    let mut sp = spec(&good);
    sp.num_joints = 68;
    assert_one_line(&err_text(open_and_load(sp), "joints"), &[s(&good), "29"]);
}

// ---- weights against the model ---------------------------------------------------------------

fn tiny_model() -> hrk::model::HrNet {
    let cfg = hrk::config::Config::from_yaml_str(
        include_str!("../experiments/synthetic/synthetic_hrnet_tiny.yaml"),
        "tiny.yaml",
    )
    .unwrap();
    hrk::cli::common::model(&cfg, 0).unwrap()
}

fn model_entries(net: &hrk::model::HrNet) -> Vec<(String, hrk::host_tensor::HostTensor)> {
    net.store.state_dict()
}

fn to_f32_entries(entries: &[(String, hrk::host_tensor::HostTensor)]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    entries
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone(), t.to_f64_vec().iter().map(|&v| v as f32).collect()))
        .collect()
}

fn convert(dir: &Path, name: &str, pth: &[u8]) -> (PathBuf, std::process::Output) {
    let src = dir.join(format!("{name}.pth"));
    std::fs::write(&src, pth).unwrap();
    let dst = dir.join(format!("{name}.safetensors"));
    let out = common::hrk(&["convert", s(&src), s(&dst)]);
    (dst, out)
}

#[test]
fn weights_vs_model_matrix() {
    let dir = scratch("hostile-lib-weights");
    let mut net = tiny_model();
    let entries: Vec<_> =
        model_entries(&net).into_iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")).collect();
    let floats = to_f32_entries(&entries);
    // Positive control: the model's own weights, as a .pth, convert and load.
    let (ok, out) = convert(&dir, "ok", &state_dict_to_pth(&floats));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    hrk::cli::common::load_weights(&mut net, &ok).unwrap();

    let victim = floats[3].0.clone();
    let last_conv = floats.iter().rposition(|e| e.1.len() == 4).unwrap();
    let last = floats[last_conv].0.clone();
    let mut missing = floats.clone();
    missing.remove(3);
    let mut extra = floats.clone();
    extra.push(("head.extra.weight".into(), vec![2], vec![1.0, 2.0]));
    // a conv weight flattened: same element count, wrong shape
    let conv = floats.iter().position(|e| e.1.len() == 4).unwrap();
    let conv_name = floats[conv].0.clone();
    let mut misshaped = floats.clone();
    let n = misshaped[conv].2.len();
    misshaped[conv].1 = vec![n];
    let mut transposed = floats.clone();
    transposed[last_conv].1.reverse();
    let mut module_prefixed = floats.clone();
    for e in module_prefixed.iter_mut() {
        e.0 = format!("module.{}", e.0);
    }
    // (case, the state_dict entries written: name, shape, values; needles of the error)
    type Entries = Vec<(String, Vec<usize>, Vec<f32>)>;
    let cases: Vec<(&str, Entries, Vec<String>)> = vec![
        ("missing", missing, vec![format!("missing tensor `{victim}`")]),
        ("extra", extra, vec!["head.extra.weight".into()]),
        ("misshaped", misshaped, vec![format!("`{conv_name}`"), "shape".into()]),
        ("transposed", transposed, vec![format!("`{last}`")]),
    ];
    for (name, ents, needles) in cases {
        let (st, out) = convert(&dir, name, &state_dict_to_pth(&ents));
        assert!(out.status.success(), "{name}: convert failed: {}", String::from_utf8_lossy(&out.stderr));
        let msg = err_text(hrk::cli::common::load_weights(&mut net, &st), name);
        let mut want = vec![s(&st).to_string()];
        want.extend(needles);
        assert_one_line(&msg, &want.iter().map(String::as_str).collect::<Vec<_>>());
        // the .pth directly too
        let pth = dir.join(format!("{name}.pth"));
        let msg = err_text(hrk::cli::common::load_weights(&mut net, &pth), name);
        assert_one_line(&msg, &[s(&pth)]);
    }
    // `module.` prefixes (DataParallel checkpoints) are accepted.
    let (st, out) = convert(&dir, "module", &state_dict_to_pth(&module_prefixed));
    assert!(out.status.success());
    hrk::cli::common::load_weights(&mut net, &st).unwrap();

    // An int64 tensor where the model has floats, and a header with a bad dtype, via safetensors.
    let mut ints = entries.clone();
    ints[0].1 = hrk::host_tensor::HostTensor::i64(ints[0].1.shape.clone(), vec![1; ints[0].1.to_f64_vec().len()]);
    let f = dir.join("ints.safetensors");
    hrk::io::save_safetensors(&f, &ints, &[]).unwrap();
    let msg = err_text(hrk::cli::common::load_weights(&mut net, &f), "ints");
    assert_one_line(&msg, &[s(&f), &format!("`{}`", ints[0].0), "int64"]);
    let f = dir.join("bad_header.safetensors");
    std::fs::write(
        &f,
        safetensors_raw(r#"{"conv1.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,4]}}"#, &[0; 4]),
    )
    .unwrap();
    assert_one_line(&err_text(hrk::cli::common::load_weights(&mut net, &f), "hdr"), &[s(&f), "conv1.weight"]);
    // The model still holds the last good weights' values after all the failures? Not
    // promised; but loading the good file again must work.
    hrk::cli::common::load_weights(&mut net, &ok).unwrap();
}

/// A spec built in code (not from a config) with absurd widths is refused before allocating,
/// including sizes whose shape product would overflow.
#[test]
fn absurd_model_specs_are_refused() {
    use hrk::model::{HrNet, HrnetSpec};
    for width in [100_000usize, 1 << 40, usize::MAX / 2] {
        let mut spec = HrnetSpec::w18(68);
        spec.stages[2].num_channels[3] = width;
        let msg = err_text(HrNet::new(&spec, 0), "wide");
        assert_one_line(&msg, &["parameters"]);
    }
    let mut spec = HrnetSpec::w18(68);
    spec.stages[1].num_modules = 1 << 30;
    assert_one_line(&err_text(HrNet::new(&spec, 0), "deep"), &["parameters"]);
    // the official W18 is well inside the limit
    assert!(HrnetSpec::w18(98).validate().is_ok());
}
