//! Inputs that exist but are not regular files (issue 25, items 3 and 4): FIFOs (`--cfg <(…)`) and
//! devices are read as bounded streams; a directory, a socket, a dangling symlink or a symlink loop
//! is named as such; in `predict` each such image is one failed image, and the run goes on.
//! Only /dev/null and /dev/zero of the real device files are touched, and only read.

mod common;

use common::model::{tiny_setup, TinySetup};
use common::{assert_cli_error, assert_cli_ok, hrk_model, s};
use std::path::Path;
use std::process::{Command, Output};

fn setup(name: &str) -> TinySetup {
    tiny_setup(&format!("paths-{name}"))
}

/// A FIFO at `path`; a detached thread writes `bytes` into it once a reader opens it (left blocked,
/// harmlessly, if none ever does).
fn fifo_fed_with(path: &Path, bytes: Vec<u8>) {
    let made = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
            let _ = f.write_all(&bytes);
        }
    });
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_and_model_file_through_fifos_work() {
    let st = setup("fifo-cfg");
    let (cfg_fifo, model_fifo) = (st.dir.join("cfg.fifo"), st.dir.join("model.fifo"));
    fifo_fed_with(&cfg_fifo, std::fs::read(&st.cfg).unwrap());
    fifo_fed_with(&model_fifo, std::fs::read(&st.weights).unwrap());
    let out = st.dir.join("out");
    let o = hrk_model("predict", &cfg_fifo, &model_fifo, &[s(&st.images[0]), "--detector", "none", "--out", s(&out)]);
    assert_cli_ok(&o);
    assert!(out.join("s68_000000.json").is_file());
}

#[test]
fn unreadable_kinds_of_config_and_model_file_are_named() {
    let st = setup("kinds");
    let img = s(&st.images[0]);
    // /dev/zero never ends: refused at the bound, not read into memory.
    let o = hrk_model("predict", Path::new("/dev/zero"), &st.weights, &[img]);
    assert_cli_error(&o, &["config file /dev/zero: more than 64 MiB, refused"]);
    // Nor as a model file, whose bound is larger.
    let o = hrk_model("predict", &st.cfg, Path::new("/dev/zero"), &[img]);
    assert_cli_error(&o, &["model file /dev/zero: more than 2048 MiB, refused"]);
    let folder = st.dir.join("a_folder");
    std::fs::create_dir(&folder).unwrap();
    let o = hrk_model("predict", &st.cfg, &folder, &[img]);
    assert_cli_error(&o, &["model file", "a_folder is a directory"]);
    let o = hrk_model("predict", &folder, &st.weights, &[img]);
    assert_cli_error(&o, &["config file", "a_folder is a directory"]);
    let loop_link = st.dir.join("loop.yaml");
    std::os::unix::fs::symlink("loop.yaml", &loop_link).unwrap();
    let o = hrk_model("predict", &loop_link, &st.weights, &[img]);
    assert_cli_error(&o, &["config file", "loop.yaml: symlink loop"]);
    let sock = st.dir.join("model.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let o = hrk_model("predict", &st.cfg, &sock, &[img]);
    assert_cli_error(&o, &["model file", "model.sock is a socket"]);
    let dangling = st.dir.join("gone.safetensors");
    std::os::unix::fs::symlink("nowhere.safetensors", &dangling).unwrap();
    let o = hrk_model("predict", &st.cfg, &dangling, &[img]);
    assert_cli_error(&o, &["model file", "gone.safetensors: dangling symlink"]);
}

#[test]
fn predict_takes_odd_image_paths_as_failed_images() {
    let st = setup("images");
    let garbage = st.dir.join("garbage.fifo");
    fifo_fed_with(&garbage, b"not an image at all".to_vec());
    let sock = st.dir.join("image.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let loop_link = st.dir.join("loop.jpg");
    std::os::unix::fs::symlink("loop.jpg", &loop_link).unwrap();
    let out = st.dir.join("out");
    let args = [s(&st.images[0]), "/dev/null", s(&garbage), s(&sock), s(&loop_link), s(&st.images[1])];
    let o =
        hrk_model("predict", &st.cfg, &st.weights, &[&args[..], &["--detector", "none", "--out", s(&out)]].concat());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for name in ["s68_000000", "s68_000001"] {
        assert!(out.join(format!("{name}.json")).is_file(), "{name}: no output; {err}");
    }
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "{err}");
    for needle in ["/dev/null", "garbage.fifo", "image.sock is a socket", "loop.jpg: symlink loop"] {
        assert_eq!(lines.iter().filter(|l| l.contains(needle)).count(), 1, "{needle}: {err}");
    }
    assert_eq!(lines[4], "hrk: error: 6 images, 2 faces, 4 failed");
}

#[test]
fn predict_folder_reports_its_bad_symlinks() {
    let st = setup("folder");
    let folder = st.dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&st.images[0], folder.join("good.jpg")).unwrap();
    std::os::unix::fs::symlink("missing.jpg", folder.join("dangling.jpg")).unwrap();
    std::os::unix::fs::symlink("self.png", folder.join("self.png")).unwrap();
    let out = st.dir.join("out");
    let o = hrk_model("predict", &st.cfg, &st.weights, &[s(&folder), "--detector", "none", "--out", s(&out)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(out.join("good.json").is_file(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines.iter().any(|l| l.contains("dangling.jpg: dangling symlink")), "{err}");
    assert!(lines.iter().any(|l| l.contains("self.png: symlink loop")), "{err}");
    assert_eq!(lines[2], "hrk: error: 3 images, 1 faces, 2 failed");
}
