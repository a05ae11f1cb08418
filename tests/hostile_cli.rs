//! The built `hrk` binary against hostile files: every case must exit non-zero, print no panic
//! text and say in ONE line which file and which place (line, key, tensor, record) is wrong.
//! Weight files go through `hrk convert` (the subcommand that reads them today); configs through
//! `hrk train --cfg` / `hrk test --cfg`, which read and validate the YAML first.

mod common;

use common::hostile::*;
use common::{assert_one_line, hrk, hrk_bin, line_of, s, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// A fixed config (the synthetic one as first written), so edits to the tuned demo config do not move the cases.
const TINY_YAML: &str = include_str!("corpus/yaml/hostile_base.yaml");

/// Runs hrk under an address-space limit, so that a file making it allocate gigabytes kills the
/// run (allocation failure → abort) instead of passing unnoticed.
fn hrk_limited(limit_mib: u64, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", limit_mib * 1024))
        .arg(hrk_bin())
        .args(args)
        .output()
        .expect("run hrk under ulimit")
}

/// Non-zero exit, no panic, one stderr line with every needle.
fn assert_refused(what: &str, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: accepted; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{what}: killed or crashed ({:?}); stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{what}: panic: {stderr}");
    assert_one_line(&stderr, needles);
}

// ---- weights through `hrk convert` ----------------------------------------------------------

fn seed(kind: &str, name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind).join(name)).unwrap()
}

#[test]
fn convert_refuses_broken_checkpoints() {
    let dir = scratch("hostile-cli-pth");
    let zip_seed = seed("pth", "zip_plain.pth");
    let legacy_seed = seed("pth", "legacy_module.pth");
    // Positive control: the seeds convert.
    let ok = dir.join("ok.safetensors");
    let out =
        hrk(&["convert", s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/pth/zip_plain.pth")), s(&ok)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut wrong_magic = legacy_seed.clone();
    wrong_magic[6] ^= 0x55; // inside the magic-number LONG1
    let mut corrupt_zip = zip_seed.clone();
    let mid = corrupt_zip.len() / 2;
    corrupt_zip[mid..mid + 32].fill(0xA5);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("trunc_zip.pth", zip_seed[..zip_seed.len() / 2].to_vec(), &[]),
        ("trunc_zip_tail.pth", zip_seed[..zip_seed.len() - 10].to_vec(), &[]),
        ("corrupt_zip.pth", corrupt_zip, &[]),
        ("trunc_legacy.pth", legacy_seed[..legacy_seed.len() - 7].to_vec(), &[]),
        ("not_zip.pth", b"this is a text file, not a checkpoint\n".to_vec(), &["unknown weights format"]),
        ("empty.pth", vec![], &["unknown weights format"]),
        ("wrong_magic.pth", wrong_magic, &["magic"]),
        ("plain_pickle.pth", Pickle::new().int(7).finish(), &["magic"]),
        (
            "tar.pth",
            {
                let mut v = vec![0u8; 600];
                v[257..262].copy_from_slice(b"ustar");
                v
            },
            &["tar"],
        ),
        (
            "dir_entry_missing.pth",
            zip_pth(
                &state_dict_pickle(&[PthTensor {
                    name: "w",
                    shape: vec![2],
                    storage_key: "0".into(),
                    storage_numel: 2,
                }]),
                &[],
            ),
            &["data/0", "missing"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let f = dir.join(name);
        std::fs::write(&f, &bytes).unwrap();
        let out_file = dir.join(format!("{name}.safetensors"));
        let out = hrk(&["convert", s(&f), s(&out_file)]);
        let mut want = vec![s(&f)];
        want.extend_from_slice(needles);
        assert_refused(name, &out, &want);
        assert!(!out_file.exists(), "{name}: output written");
    }
    let out = hrk(&["convert", s(&dir.join("absent.pth")), s(&dir.join("x.safetensors"))]);
    assert_refused("absent", &out, &["absent.pth"]);
}

/// Pickles that would run code under Python's `torch.load(weights_only=False)`. They must be
/// refused by name, and the command they carry must not have run: each would create a
/// sentinel file.
#[test]
fn convert_refuses_code_execution_pickles() {
    let dir = scratch("hostile-cli-rce");
    let sentinel = dir.join("PWNED");
    let cmd = format!("touch {}", sentinel.display());
    let reduce = |module: &str, name: &str| -> Vec<u8> {
        Pickle::new().global(module, name).op(b"(").str(&cmd).op(b"tR").finish()
    };
    // protocol 4: STACK_GLOBAL with the names as strings
    let mut stack_global = Pickle::new();
    stack_global.0[1] = 4;
    stack_global
        .str("subprocess")
        .str("call")
        .op(b"\x93")
        .op(b"(")
        .op(b"(")
        .str("sh")
        .str("-c")
        .str(&cmd)
        .op(b"l")
        .op(b"tR");
    let stack_global = stack_global.finish();
    // INST: the old text opcode that imports and calls in one step
    let inst = {
        let mut v = Pickle::new();
        v.op(b"(").str(&cmd).op(b"ios\nsystem\n");
        v.finish()
    };
    // a real-looking state dict whose hooks argument is the os.system call
    let hidden = {
        let mut p = Pickle::new();
        p.global("collections", "OrderedDict").op(b")R").str("w").global("torch._utils", "_rebuild_tensor_v2");
        p.op(b"((").str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(1).op(b"tQ");
        p.int(0).ints_tuple(&[1]).ints_tuple(&[1]).op(b"\x89");
        p.global("os", "system").op(b"(").str(&cmd).op(b"tR");
        p.op(b"tRs").finish()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("os_system.pth", zip_pth(&reduce("os", "system"), &[]), "os.system"),
        ("posix_system.pth", zip_pth(&reduce("posix", "system"), &[]), "posix.system"),
        ("builtins_eval.pth", zip_pth(&reduce("builtins", "exec"), &[]), "builtins.exec"),
        ("subprocess.pth", zip_pth(&stack_global, &[]), "subprocess.call"),
        ("inst.pth", zip_pth(&inst, &[]), "INST"),
        ("hidden_in_tensor.pth", zip_pth(&hidden, &[("0".into(), vec![0; 4])]), "os.system"),
        (
            "legacy_sysinfo.pth",
            {
                let mut v = hrk::io::pth::LEGACY_MAGIC.to_vec();
                v.push(b'.');
                v.extend(Pickle::new().int(1001).finish());
                v.extend(reduce("os", "system"));
                v
            },
            "os.system",
        ),
    ];
    for (name, bytes, needle) in cases {
        let f = dir.join(name);
        std::fs::write(&f, &bytes).unwrap();
        let out = hrk(&["convert", s(&f), s(&dir.join("out.safetensors"))]);
        assert_refused(name, &out, &[s(&f), needle]);
        assert!(!sentinel.exists(), "{name}: the pickled command ran");
    }
    // The sentinel mechanism itself works (so its absence above means something).
    std::process::Command::new("sh").arg("-c").arg(&cmd).status().unwrap();
    assert!(sentinel.exists());
}

#[test]
fn convert_refuses_broken_safetensors_headers() {
    let dir = scratch("hostile-cli-st");
    let good = seed("safetensors", "halves.safetensors");
    let mut cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("short.safetensors", good[..5].to_vec(), &[]),
        (
            "header_past_end.safetensors",
            {
                let mut v = good.clone();
                v[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
                v
            },
            &[],
        ),
        ("not_json.safetensors", safetensors_raw("{this is not json}", &[]), &[]),
    ];
    // Broken headers over zero-filled data: (file, header, bytes of data); each message names tensor w.
    for (name, header, data) in [
        ("wrong_dtype.safetensors", r#"{"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}"#, 4),
        ("offsets_past_end.safetensors", r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8),
        ("shape_vs_bytes.safetensors", r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8),
        ("negative_dim.safetensors", r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4),
        (
            "dup_key.safetensors",
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        ),
    ] {
        cases.push((name, safetensors_raw(header, &vec![0; data]), &["w"]));
    }
    for (name, bytes, needles) in cases {
        let f = dir.join(name);
        std::fs::write(&f, &bytes).unwrap();
        let out = hrk(&["convert", s(&f), s(&dir.join("out.safetensors"))]);
        let mut want = vec![s(&f)];
        want.extend_from_slice(needles);
        assert_refused(name, &out, &want);
    }
}

/// Files declaring absurd sizes are refused before allocating: hrk runs under a 1.5 GiB
/// address-space limit, far below what each file claims (TiB), and still answers with a
/// one-line error rather than an allocation abort.
#[test]
fn absurd_declared_sizes_are_refused_before_allocating() {
    let dir = scratch("hostile-cli-huge");
    const LIMIT_MIB: u64 = 1536;
    // Positive control: a normal conversion works under the same limit.
    let ok = dir.join("ok.safetensors");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/pth/zip_plain.pth");
    let out = hrk_limited(LIMIT_MIB, &["convert", s(&src), s(&ok)]);
    assert!(out.status.success(), "control failed under the limit: {}", String::from_utf8_lossy(&out.stderr));

    let tib = 1u64 << 40;
    let huge_shape = |numel: u64| PthTensor {
        name: "huge.weight",
        shape: vec![1 << 20, 1 << 20],
        storage_key: "0".into(),
        storage_numel: numel,
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("huge_storage.pth", zip_pth(&state_dict_pickle(&[huge_shape(tib)]), &[("0".into(), vec![0; 16])]), &[]),
        // a small storage, but a view claiming 2^40 elements of it
        (
            "huge_view.pth",
            zip_pth(&state_dict_pickle(&[huge_shape(4)]), &[("0".into(), vec![0; 16])]),
            &["huge.weight"],
        ),
        (
            "huge_shape.safetensors",
            safetensors_raw(
                r#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
            &["w"],
        ),
        (
            "huge_offsets.safetensors",
            safetensors_raw(
                r#"{"w":{"dtype":"F32","shape":[274877906944],"data_offsets":[0,1099511627776]}}"#,
                &[0; 16],
            ),
            &["w"],
        ),
        (
            "huge_header.safetensors",
            {
                let mut v = (1u64 << 60).to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            &[],
        ),
    ];
    for (name, bytes, needles) in cases {
        let f = dir.join(name);
        std::fs::write(&f, &bytes).unwrap();
        let out = hrk_limited(LIMIT_MIB, &["convert", s(&f), s(&dir.join("out.safetensors"))]);
        let mut want = vec![s(&f)];
        want.extend_from_slice(needles);
        assert_refused(name, &out, &want);
    }
}

// ---- configs through `hrk train --cfg` / `hrk test --cfg` ------------------------------------

fn tiny_with(old: &str, new: &str) -> String {
    common::replace_once(TINY_YAML, old, new)
}

#[test]
fn bad_configs_fail_with_file_line_and_key() {
    let dir = scratch("hostile-cli-yaml");
    let mismatch = tiny_with("      NUM_BRANCHES: 3\n", "      NUM_BRANCHES: 2\n");
    let bomb = {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            s += &format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
                p = i - 1
            );
        }
        s
    };
    let deep = format!("MODEL:\n  EXTRA: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    // (file, text, needles; "@LINE:needle" means "file:<line of needle>:")
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("unknown_key.yaml", tiny_with("  LR: 0.001", "  LRR: 0.001"), vec!["@LINE:LRR".into(), "TRAIN.LRR".into()]),
        (
            "wrong_type.yaml",
            tiny_with("  NUM_JOINTS: 68", "  NUM_JOINTS: many"),
            vec!["@LINE:NUM_JOINTS".into(), "MODEL.NUM_JOINTS".into()],
        ),
        ("float_for_int.yaml", tiny_with("  NUM_JOINTS: 68", "  NUM_JOINTS: 68.5"), vec!["MODEL.NUM_JOINTS".into()]),
        ("list_for_scalar.yaml", tiny_with("  SIGMA: 1.0", "  SIGMA: [1.0, 2.0]"), vec!["MODEL.SIGMA".into()]),
        (
            "wrong_nesting.yaml",
            tiny_with("  EXTRA:\n    FINAL_CONV_KERNEL: 1\n", "  FINAL_CONV_KERNEL: 1\n  EXTRA:\n"),
            vec!["@LINE:FINAL_CONV_KERNEL".into(), "MODEL.FINAL_CONV_KERNEL".into()],
        ),
        ("scalar_for_section.yaml", tiny_with("TEST:\n  BATCH_SIZE_PER_GPU: 16", "TEST: 16"), vec!["TEST".into()]),
        ("branches_mismatch.yaml", mismatch, vec!["STAGE3".into()]),
        (
            "negative_size.yaml",
            tiny_with("  IMAGE_SIZE:\n    - 128", "  IMAGE_SIZE:\n    - -128"),
            vec!["MODEL.IMAGE_SIZE".into()],
        ),
        (
            "zero_heatmap.yaml",
            tiny_with("  HEATMAP_SIZE:\n    - 32", "  HEATMAP_SIZE:\n    - 0"),
            vec!["MODEL.HEATMAP_SIZE".into()],
        ),
        (
            "huge_number.yaml",
            tiny_with("  NUM_JOINTS: 68", "  NUM_JOINTS: 99999999999999999999999999"),
            vec!["MODEL.NUM_JOINTS".into()],
        ),
        ("negative_epoch.yaml", tiny_with("  END_EPOCH: 8", "  END_EPOCH: -8"), vec!["TRAIN.END_EPOCH".into()]),
        (
            "huge_channels.yaml",
            tiny_with("        - 64\n      FUSE_METHOD", "        - 4294967296\n      FUSE_METHOD"),
            vec!["MODEL.EXTRA".into(), "parameters".into()],
        ),
        (
            "huge_modules.yaml",
            tiny_with("      NUM_MODULES: 1", "      NUM_MODULES: 100000000"),
            vec!["MODEL.EXTRA".into(), "parameters".into()],
        ),
        ("huge_joints.yaml", tiny_with("  NUM_JOINTS: 68", "  NUM_JOINTS: 100000000000"), vec!["parameters".into()]),
        ("syntax.yaml", tiny_with("  NUM_JOINTS: 68", "  NUM_JOINTS: [68"), vec![]),
        ("tab_indent.yaml", tiny_with("  NUM_JOINTS: 68", "\tNUM_JOINTS: 68"), vec![]),
        ("billion_laughs.yaml", bomb, vec![]),
        ("deep_nesting.yaml", deep, vec![]),
        ("not_utf8.yaml", String::from_utf8_lossy(b"GPUS: (0,)\n").into_owned() + "\u{fffd}", vec![]),
    ];
    for (name, text, needles) in cases {
        let f = dir.join(name);
        if name == "not_utf8.yaml" {
            std::fs::write(&f, b"GPUS: (0,)\nWORKERS: \xff\xfe\n").unwrap();
        } else {
            std::fs::write(&f, &text).unwrap();
        }
        let mut want: Vec<String> = vec![s(&f).to_string()];
        for n in &needles {
            match n.strip_prefix("@LINE:") {
                Some(k) => want.push(format!("{}:{}:", s(&f), line_of(&text, k))),
                None => want.push(n.clone()),
            }
        }
        let want_refs: Vec<&str> = want.iter().map(String::as_str).collect();
        // `hrk test` loads the config before it looks at the model file.
        let missing_model = dir.join("never-written.safetensors");
        for sub in ["train", "test"] {
            let started = std::time::Instant::now();
            let out = if sub == "test" {
                hrk(&[sub, "--cfg", s(&f), "--model-file", s(&missing_model)])
            } else {
                hrk(&[sub, "--cfg", s(&f)])
            };
            assert_refused(&format!("{sub} {name}"), &out, &want_refs);
            assert!(started.elapsed().as_secs() < 20, "{name}: took {:?}", started.elapsed());
        }
    }
    // A missing config and a directory given as config.
    let out = hrk(&["train", "--cfg", s(&dir.join("nope.yaml"))]);
    assert_refused("missing", &out, &["nope.yaml"]);
    let out = hrk(&["test", "--cfg", s(&dir), "--model-file", s(&dir.join("never-written.safetensors"))]);
    assert_refused("directory", &out, &[s(&dir)]);
}

#[test]
fn a_batch_too_big_for_memory_is_refused_before_allocating() {
    let dir = scratch("hostile-cli-memory");
    let huge = tiny_with("  IMAGE_SIZE:\n    - 128\n    - 128", "  IMAGE_SIZE:\n    - 8192\n    - 8192");
    let huge =
        common::replace_once(&huge, "  HEATMAP_SIZE:\n    - 32\n    - 32", "  HEATMAP_SIZE:\n    - 2048\n    - 2048");
    let cfg = dir.join("huge_image.yaml");
    std::fs::write(&cfg, huge).unwrap();
    let missing_model = dir.join("never-written.safetensors");
    // Under a 4 GB address-space limit (the sweep's case): exit status 1, not SIGABRT.
    for (sub, lower) in [("train", "TRAIN.BATCH_SIZE_PER_GPU"), ("test", "--batch")] {
        let mut args = vec![sub, "--cfg", s(&cfg)];
        if sub == "test" {
            args.extend(["--model-file", s(&missing_model)]);
        }
        let started = std::time::Instant::now();
        let out = hrk_limited(3906, &args);
        let needles = ["not enough memory", "8192x8192", "needs about", "may allocate only", lower, "MODEL.IMAGE_SIZE"];
        assert_refused(&format!("{sub} 8192²"), &out, &needles);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(["ulimit -v", "cgroup", "MemAvailable"].iter().any(|l| stderr.contains(l)), "{stderr}");
        assert!(started.elapsed().as_secs() < 20, "{sub}: took {:?}", started.elapsed());
    }
    // The test switch caps the budget below any real limit, and is named.
    let tiny = dir.join("tiny.yaml");
    std::fs::write(&tiny, TINY_YAML).unwrap();
    let out = Command::new(hrk_bin())
        .args(["test", "--cfg", s(&tiny), "--model-file", s(&missing_model), "--batch", "4"])
        .env("HRK_MEMORY_LIMIT_MB", "1")
        .output()
        .unwrap();
    assert_refused("HRK_MEMORY_LIMIT_MB=1", &out, &["batch of 4 image(s) at 128x128", "(HRK_MEMORY_LIMIT_MB)"]);
    // `hrk bench` with absurd batches (the second sweep's cases 43–44: SIGABRT, and a run that kept
    // allocating): refused at once, before any buffer.
    for (batch, train) in [("100000000", false), ("100000", true)] {
        let mut args = vec!["bench", "--cfg", s(&tiny), "--batch", batch, "--iters", "1"];
        if train {
            args.push("--train");
        }
        let started = std::time::Instant::now();
        let out = hrk(&args);
        let kind = if train { "a training batch" } else { "an inference batch" };
        assert_refused(&format!("bench --batch {batch}"), &out, &["not enough memory", kind, "--batch"]);
        assert!(started.elapsed().as_secs() < 20, "bench --batch {batch}: took {:?}", started.elapsed());
    }
}

#[test]
fn unknown_device_is_one_line() {
    let cfg: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/synthetic/synthetic_hrnet_tiny.yaml");
    let out = hrk(&["train", "--cfg", s(&cfg), "--device", "tpu"]);
    assert_refused("device", &out, &["tpu"]);
}
