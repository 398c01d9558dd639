//! Datasets and preprocessing: folders, tensors, the demo digits, flags and
//! config merging, splits, and the error messages.

use std::io::Write;
use std::path::Path;

use rba_host::data::npy;
use rba_host::data::preprocess::parse_scale;
use rba_host::data::{
    split_indices, tensors, DataError, Dataset, Holdout, Hw, Layout, Preprocess, PreprocessOptions, PreprocessSpec,
    Resize,
};
use rba_host::demo::{DemoModel, Digits, Split};
use rba_host::model::run::nd;

const TOL: f32 = 1e-6;

fn gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).expect("write png");
}

fn rgb_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y))).save(path).expect("write png");
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "lengths differ: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "value {i}: got {g}, want {w} (all: {got:?})");
    }
}

/// `--flag value` pairs as the `rba` binary parses them (its own tests
/// cover the command line) -> Preprocess (no model).
fn pre_from(flags: &[&str], model_input: Option<&[usize]>) -> Result<Preprocess, DataError> {
    let floats = |v: &str| v.split(',').map(|x| x.parse::<f32>().expect("float")).collect::<Vec<f32>>();
    let mut o = PreprocessOptions::default();
    for pair in flags.chunks(2) {
        let [flag, v] = pair else { panic!("flags come in pairs: {flags:?}") };
        match *flag {
            "--size" => o.size = Some(v.parse().expect("size")),
            "--resize-shorter" => o.resize_shorter = Some(v.parse().expect("n")),
            "--crop" => o.crop = Some(v.parse().expect("crop")),
            "--mean" => o.mean = Some(floats(v)),
            "--std" => o.std = Some(floats(v)),
            "--scale" => o.scale = Some(parse_scale(v).expect("scale")),
            "--layout" => o.layout = Some(v.parse().expect("layout")),
            "--channels" => o.channels = Some(v.parse().expect("channels")),
            other => panic!("unknown flag {other}"),
        }
    }
    Preprocess::from_args(&o, None, model_input)
}

fn values(data: &Dataset, pre: &Preprocess) -> (Vec<usize>, Vec<f32>, Option<Vec<usize>>) {
    let (x, y) = data.load_all(pre).expect("load");
    (x.shape().to_vec(), x.iter().copied().collect(), y)
}

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn image_folder_labels_classes_and_sorted_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    gray_png(&root.join("dog/b.png"), 2, 2, |_, _| 3);
    gray_png(&root.join("cat/z.png"), 2, 2, |_, _| 2);
    gray_png(&root.join("cat/a.png"), 2, 2, |_, _| 1);
    image::RgbImage::from_pixel(2, 2, image::Rgb([4, 4, 4])).save(root.join("dog/a.jpg")).expect("jpeg");
    gray_png(&root.join("cat/nested/m.png"), 2, 2, |_, _| 5);
    std::fs::write(root.join("cat/notes.txt"), "not an image").expect("txt");
    std::fs::create_dir_all(root.join(".cache")).expect("hidden dir");

    let data = Dataset::open(root.to_str().expect("utf8")).expect("open");
    assert_eq!(data.classes().expect("classes"), vec!["cat".to_string(), "dog".to_string()]);
    let names: Vec<String> = data
        .paths()
        .iter()
        .map(|p| p.strip_prefix(root).expect("under root").display().to_string().replace('\\', "/"))
        .collect();
    assert_eq!(names, ["cat/a.png", "cat/z.png", "cat/nested/m.png", "dog/a.jpg", "dog/b.png"]);
    assert_eq!(data.require_labels().expect("labels"), vec![0, 0, 0, 1, 1]);

    // 1 channel, no resize, scale 1: the raw gray values in order (the JPEG
    // is flat, so it decodes to exactly 4 almost surely; allow JPEG error).
    let pre = pre_from(&["--scale", "1", "--channels", "1", "--size", "2"], Some(&[1, 1, 2, 2])).expect("pre");
    let (shape, v, labels) = values(&data, &pre);
    assert_eq!(shape, vec![5, 1, 2, 2]);
    assert_eq!(labels, Some(vec![0, 0, 0, 1, 1]));
    let firsts: Vec<f32> = v.chunks(4).map(|c| c[0]).collect();
    assert_close(&firsts[..3], &[1.0, 2.0, 5.0]);
    assert!((firsts[3] - 4.0).abs() <= 1.0, "jpeg value {}", firsts[3]);
    assert_close(&firsts[4..], &[3.0]);
}

#[test]
fn flat_folder_is_unlabeled_and_batches_have_fixed_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..5u8 {
        gray_png(&dir.path().join(format!("img{i}.png")), 1, 1, |_, _| i * 10);
    }
    let data = Dataset::open(dir.path().to_str().expect("utf8")).expect("open");
    assert_eq!(data.len(), 5);
    assert!(!data.has_labels());
    let pre = pre_from(&["--scale", "1", "--channels", "1", "--layout", "nchw"], Some(&[1, 1, 1, 1])).expect("pre");
    let batches: Vec<_> = data.batches(&pre, 2).collect::<Result<_, _>>().expect("batches");
    let shapes: Vec<Vec<usize>> = batches.iter().map(|(x, _)| x.shape().to_vec()).collect();
    assert_eq!(shapes, vec![vec![2, 1, 1, 1], vec![2, 1, 1, 1], vec![1, 1, 1, 1]]);
    assert!(batches.iter().all(|(_, y)| y.is_none()));
    let all: Vec<f32> = batches.iter().flat_map(|(x, _)| x.iter().copied().collect::<Vec<_>>()).collect();
    assert_close(&all, &[0.0, 10.0, 20.0, 30.0, 40.0]);
    let e = err_text(data.require_labels());
    assert!(e.contains(&dir.path().display().to_string()) && e.contains("labels"), "{e}");
}

/// A 4x4 gray image with p(y, x) = 16 * (4y + x).
fn ramp(dir: &Path) -> Dataset {
    gray_png(&dir.join("ramp.png"), 4, 4, |x, y| (16 * (4 * y + x)) as u8);
    Dataset::image_files(dir).expect("open")
}

#[test]
fn resize_then_normalize_matches_hand_computed_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = ramp(dir.path());
    let pre =
        pre_from(&["--size", "2,2", "--scale", "1/255", "--mean", "0.5", "--std", "0.25", "--channels", "1"], None)
            .expect("pre");
    let (shape, v, _) = values(&data, &pre);
    assert_eq!(shape, vec![1, 1, 2, 2]);
    // Halving with half-pixel centres averages each 2x2 block:
    // (0+16+64+80)/4 = 40, (32+48+96+112)/4 = 72, 168, 200.
    let norm = |p: f32| (p / 255.0 - 0.5) / 0.25;
    assert_close(&v, &[norm(40.0), norm(72.0), norm(168.0), norm(200.0)]);
}

#[test]
fn upscaling_interpolates_linearly_with_clamped_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    gray_png(&dir.path().join("two.png"), 2, 1, |x, _| if x == 0 { 0 } else { 100 });
    let data = Dataset::image_files(dir.path()).expect("open");
    let pre = pre_from(&["--size", "1,4", "--scale", "1", "--channels", "1"], None).expect("pre");
    // Source x for outputs 0..4: -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    assert_close(&values(&data, &pre).1, &[0.0, 25.0, 75.0, 100.0]);
}

#[test]
fn center_crop_and_resize_shorter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = ramp(dir.path());
    let pre = pre_from(&["--crop", "2", "--scale", "1", "--channels", "1"], Some(&[1, 1, 2, 2])).expect("pre");
    // Offsets (4-2)/2 = 1: p(1,1)=80, p(1,2)=96, p(2,1)=144, p(2,2)=160.
    assert_close(&values(&data, &pre).1, &[80.0, 96.0, 144.0, 160.0]);

    // Odd margins round down: 3x3 cropped to 2x2 starts at (0, 0).
    let dir = tempfile::tempdir().expect("tempdir");
    gray_png(&dir.path().join("odd.png"), 3, 3, |x, y| (10 * (3 * y + x)) as u8);
    let data = Dataset::image_files(dir.path()).expect("open");
    let pre = pre_from(&["--crop", "2", "--scale", "1", "--channels", "1"], None).expect("pre");
    assert_close(&values(&data, &pre).1, &[0.0, 10.0, 30.0, 40.0]);

    // 4 high x 6 wide, shorter side to 2 -> 2x3, then crop 2x2 at left (3-2)/2 = 0.
    let dir = tempfile::tempdir().expect("tempdir");
    gray_png(&dir.path().join("wide.png"), 6, 4, |x, y| (10 * (6 * y + x)) as u8);
    let data = Dataset::image_files(dir.path()).expect("open");
    let pre =
        pre_from(&["--resize-shorter", "2", "--crop", "2,2", "--scale", "1", "--channels", "1"], None).expect("pre");
    // Block averages of p = 10 * (6y + x): rows 0-1, cols 0-1: (0+10+60+70)/4 = 35; cols 2-3: 55;
    // rows 2-3, cols 0-1: 155; cols 2-3: 175.
    assert_close(&values(&data, &pre).1, &[35.0, 55.0, 155.0, 175.0]);
}

#[test]
fn nchw_and_nhwc_layouts_and_channel_conversion() {
    let dir = tempfile::tempdir().expect("tempdir");
    rgb_png(&dir.path().join("rgb.png"), 2, 1, |x, _| if x == 0 { [10, 20, 30] } else { [40, 50, 60] });
    let data = Dataset::image_files(dir.path()).expect("open");

    // Tiny shapes such as [1,1,2,3] are ambiguous (1 or 3 channels), so the
    // layout is given; channels and size then come from the shape.
    let nchw = pre_from(&["--scale", "1", "--layout", "nchw"], Some(&[1, 3, 1, 2])).expect("nchw");
    assert_eq!(nchw.layout, Layout::Nchw);
    let (shape, v, _) = values(&data, &nchw);
    assert_eq!(shape, vec![1, 3, 1, 2]);
    assert_close(&v, &[10.0, 40.0, 20.0, 50.0, 30.0, 60.0]);

    let nhwc = pre_from(&["--scale", "1", "--layout", "nhwc"], Some(&[1, 1, 2, 3])).expect("nhwc");
    assert_eq!(nhwc.layout, Layout::Nhwc);
    let (shape, v, _) = values(&data, &nhwc);
    assert_eq!(shape, vec![1, 1, 2, 3]);
    assert_close(&v, &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);

    // RGB to gray for a 1-channel model: 0.299 R + 0.587 G + 0.114 B.
    let gray = pre_from(&["--scale", "1", "--layout", "nchw"], Some(&[1, 1, 1, 2])).expect("gray");
    let (shape, v, _) = values(&data, &gray);
    assert_eq!(shape, vec![1, 1, 1, 2]);
    assert_close(&v, &[2.99 + 11.74 + 3.42, 11.96 + 29.35 + 6.84]);

    // Gray to RGB, with per-channel normalization.
    let dir = tempfile::tempdir().expect("tempdir");
    gray_png(&dir.path().join("g.png"), 1, 1, |_, _| 51);
    let data = Dataset::image_files(dir.path()).expect("open");
    let pre = pre_from(&["--mean", "0.1,0.2,0.3", "--std", "0.5,0.25,2", "--layout", "nchw"], Some(&[1, 3, 1, 1]))
        .expect("pre");
    assert_close(&values(&data, &pre).1, &[(0.2 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (0.2 - 0.3) / 2.0]);
}

#[test]
fn layout_and_size_are_inferred_from_the_input_shape() {
    let s = PreprocessSpec::from_input_shape(&[1, 224, 224, 3]);
    assert_eq!((s.layout, s.channels, s.target), (Some(Layout::Nhwc), Some(3), Some(Hw::new(224, 224))));
    let s = PreprocessSpec::from_input_shape(&[1, 3, 32, 48]);
    assert_eq!((s.layout, s.channels, s.target), (Some(Layout::Nchw), Some(3), Some(Hw::new(32, 48))));
    let s = PreprocessSpec::from_input_shape(&[1, 3, 8, 3]);
    assert_eq!(s.layout, None);
    // Given the layout, an ambiguous shape still yields channels and size.
    let pre = pre_from(&["--layout", "nhwc"], Some(&[2, 3, 8, 3])).expect("nhwc");
    assert_eq!((pre.channels, pre.size), (3, Some(Hw::new(3, 8))));
    let pre = Preprocess::merge(PreprocessSpec::default(), None, None, Some(&[4, 1, 8, 8])).expect("merge");
    assert_eq!(pre.sample_shape(), Some(vec![1, 8, 8]));
    assert_eq!(pre.scale, 1.0 / 255.0);
}

#[test]
fn shape_mismatch_names_both_shapes() {
    let e = err_text(pre_from(&["--layout", "nchw"], Some(&[1, 8, 8, 3])));
    assert!(e.contains("nchw") && e.contains("[1, 3, 8, 3]") && e.contains("[1, 8, 8, 3]"), "{e}");
    let e = err_text(pre_from(&["--layout", "nchw", "--size", "8,8"], Some(&[1, 8, 8, 3])));
    assert!(e.contains("[1, 3, 8, 8]") && e.contains("[1, 8, 8, 3]"), "{e}");
    let e = err_text(pre_from(&["--channels", "1"], Some(&[1, 3, 8, 8])));
    assert!(e.contains("[1, 1, 8, 8]") && e.contains("[1, 3, 8, 8]"), "{e}");
    let e = err_text(pre_from(&["--crop", "5"], Some(&[1, 3, 4, 4])));
    assert!(e.contains("[1, 3, 5, 5]") && e.contains("[1, 3, 4, 4]"), "{e}");
    let e = err_text(pre_from(&["--mean", "0.1,0.2"], Some(&[1, 3, 4, 4])));
    assert!(e.contains("mean has 2 values"), "{e}");
}

#[test]
fn hf_config_merges_below_flags_and_above_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("preprocessor_config.json");
    std::fs::write(
        &cfg,
        r#"{"do_resize": true, "size": {"shortest_edge": 4}, "do_center_crop": true,
            "crop_size": {"height": 2, "width": 2}, "do_rescale": true, "rescale_factor": 0.5,
            "do_normalize": true, "image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 4],
            "resample": 3, "image_processor_type": "CLIPImageProcessor"}"#,
    )
    .expect("write cfg");
    let hf = PreprocessSpec::from_hf_file(&cfg).expect("hf");
    assert_eq!(hf.resize, Some(Resize::Shorter(4)));
    assert_eq!(hf.crop, Some(Some(Hw::new(2, 2))));
    assert_eq!(hf.scale, Some(0.5));

    let meta = PreprocessSpec::from_metadata_json(
        r#"{"layout":"nhwc","scale":0.0625,"mean":[0.0],"std":[1.0],"size":[8,8],"channels":3}"#,
        "model.onnx",
    )
    .expect("meta");
    let args =
        PreprocessOptions { mean: Some(vec![0.0]), preprocessor_config: Some(cfg.clone()), ..Default::default() };
    let pre = Preprocess::from_args(&args, Some(meta.clone()), Some(&[1, 2, 2, 3])).expect("merge");
    assert_eq!(pre.resize, Resize::Shorter(4)); // HF over metadata's size
    assert_eq!(pre.crop, Some(Hw::new(2, 2)));
    assert_eq!(pre.scale, 0.5); // HF over metadata
    assert_eq!(pre.mean, vec![0.0; 3]); // flag over HF
    assert_eq!(pre.std, vec![1.0, 2.0, 4.0]); // HF
    assert_eq!(pre.layout, Layout::Nhwc); // metadata (HF has none; agrees with the shape)
                                          // Without the config file the metadata's scale and size apply.
    let pre = Preprocess::from_args(&PreprocessOptions::default(), Some(meta), None).expect("meta only");
    assert_eq!((pre.scale, pre.resize), (0.0625, Resize::Exact(Hw::new(8, 8))));

    // do_* = false switch steps off, even against lower sources.
    let off = PreprocessSpec::from_hf_json(
        r#"{"do_resize": false, "size": {"height": 9, "width": 9}, "do_rescale": false, "do_normalize": false,
            "image_mean": [0.5], "do_center_crop": false, "crop_size": 3}"#,
        "cfg",
    )
    .expect("hf off");
    assert_eq!((off.resize, off.crop, off.scale), (Some(Resize::None), Some(None), Some(1.0)));
    assert_eq!((off.mean, off.std), (Some(vec![0.0]), Some(vec![1.0])));
    // ViT style {"height", "width"} and bare numbers.
    let vit = PreprocessSpec::from_hf_json(r#"{"size": {"height": 224, "width": 160}}"#, "cfg").expect("vit");
    assert_eq!(vit.resize, Some(Resize::Exact(Hw::new(224, 160))));
    let old =
        PreprocessSpec::from_hf_json(r#"{"size": 256, "do_center_crop": true, "crop_size": 224}"#, "cfg").expect("old");
    assert_eq!((old.resize, old.crop), (Some(Resize::Shorter(256)), Some(Some(Hw::new(224, 224)))));

    // Bad configs name the file.
    std::fs::write(&cfg, "{ not json").expect("write");
    let e = err_text(PreprocessSpec::from_hf_file(&cfg));
    assert!(e.contains("preprocessor_config.json"), "{e}");
    std::fs::write(&cfg, r#"{"do_center_crop": true}"#).expect("write");
    let e = err_text(PreprocessSpec::from_hf_file(&cfg));
    assert!(e.contains("preprocessor_config.json") && e.contains("crop_size"), "{e}");
}

fn npz(path: &Path, members: &[(&str, nd::ArrayD<f32>)], method: zip::CompressionMethod) {
    let file = std::fs::File::create(path).expect("create npz");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, array) in members {
        zip.start_file(format!("{name}.npy"), options).expect("start member");
        zip.write_all(&npy::to_bytes_f32(array)).expect("write member");
    }
    zip.finish().expect("finish");
}

fn arr(shape: &[usize], values: Vec<f32>) -> nd::ArrayD<f32> {
    nd::ArrayD::from_shape_vec(shape.to_vec(), values).expect("shape")
}

#[test]
fn npz_inputs_and_labels_stored_and_deflated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let x = arr(&[3, 1, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let y = arr(&[3], vec![2.0, 0.0, 1.0]);
    for (name, method) in
        [("stored.npz", zip::CompressionMethod::Stored), ("deflated.npz", zip::CompressionMethod::Deflated)]
    {
        let path = dir.path().join(name);
        npz(&path, &[("extra", arr(&[1], vec![9.0])), ("y", y.clone()), ("x", x.clone())], method);
        let data = Dataset::open(path.to_str().expect("utf8")).expect("open npz");
        assert_eq!(data.len(), 3);
        let pre = Preprocess::passthrough(&[7, 1, 2]);
        let batches: Vec<_> = data.batches(&pre, 2).collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].0.shape(), &[2, 1, 2]);
        assert_close(batches[1].0.as_slice().expect("contiguous"), &[5.0, 6.0]);
        assert_eq!(batches[0].1, Some(vec![2, 0]));
        assert_eq!(batches[1].1, Some(vec![1]));
        // A model needing another shape: the error names the file.
        let e = err_text(data.load_all(&Preprocess::passthrough(&[1, 2, 1])));
        assert!(e.contains(name) && e.contains("[1, 2]") && e.contains("[2, 1]"), "{e}");
    }
    // `inputs`/`labels` names work too; without labels there are none.
    let path = dir.path().join("inputs.npz");
    npz(&path, &[("inputs", x.clone())], zip::CompressionMethod::Stored);
    let data = Dataset::tensors(&path).expect("open");
    assert!(!data.has_labels());
    assert!(err_text(data.require_labels()).contains("inputs.npz"));
    // No x/inputs array.
    let path = dir.path().join("wrong.npz");
    npz(&path, &[("data", x.clone())], zip::CompressionMethod::Stored);
    let e = err_text(Dataset::tensors(&path));
    assert!(e.contains("wrong.npz") && e.contains("data"), "{e}");
    // Labels of the wrong length or not integers.
    let path = dir.path().join("badlabels.npz");
    npz(&path, &[("x", x.clone()), ("labels", arr(&[2], vec![0.0, 1.5]))], zip::CompressionMethod::Stored);
    let e = err_text(Dataset::tensors(&path));
    assert!(e.contains("badlabels.npz") && e.contains("expected [3]"), "{e}");
    // Not a zip at all.
    let path = dir.path().join("garbage.npz");
    std::fs::write(&path, b"garbage").expect("write");
    assert!(err_text(Dataset::tensors(&path)).contains("garbage.npz"));
}

#[test]
fn npy_with_sibling_labels_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let x = arr(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    std::fs::write(dir.path().join("calib.npy"), npy::to_bytes_f32(&x)).expect("x");
    let data = Dataset::open(dir.path().join("calib.npy").to_str().expect("utf8")).expect("open");
    assert!(!data.has_labels());
    std::fs::write(dir.path().join("calib.labels.npy"), npy::to_bytes_f32(&arr(&[2], vec![1.0, 0.0]))).expect("y");
    let data = Dataset::tensors(dir.path().join("calib.npy")).expect("open");
    assert_eq!(data.labels(), Some(vec![1, 0]));
    // x.npy pairs with y.npy.
    std::fs::write(dir.path().join("x.npy"), npy::to_bytes_f32(&x)).expect("x");
    std::fs::write(dir.path().join("y.npy"), npy::to_bytes_f32(&arr(&[2], vec![3.0, 4.0]))).expect("y");
    assert_eq!(tensors::labels_file(&dir.path().join("x.npy")), Some(dir.path().join("y.npy")));
    assert_eq!(Dataset::tensors(dir.path().join("x.npy")).expect("open").labels(), Some(vec![3, 4]));
    // A corrupt .npy names itself.
    std::fs::write(dir.path().join("bad.npy"), b"nope").expect("bad");
    assert!(err_text(Dataset::tensors(dir.path().join("bad.npy"))).contains("bad.npy"));
}

#[test]
fn demo_digits_match_the_embedded_batches_and_committed_splits() {
    let digits = Digits::embedded().expect("digits");
    for model in [DemoModel::Resnet, DemoModel::Vit] {
        let onnx = model.load().expect("model");
        let pre = Preprocess::for_model(&PreprocessOptions::default(), &onnx).expect("preprocess from metadata");
        assert_eq!(pre.scale, 1.0 / 16.0);
        let data = Dataset::open("demo:val").expect("demo:val");
        let idx = digits.indices(Split::Val);
        assert_eq!(data.len(), idx.len());
        let (x, y) = data.batches(&pre, 64).next().expect("a batch").expect("ok");
        let want = digits.batch(&idx[..64]);
        let want = match pre.layout {
            Layout::Nchw => want,
            Layout::Nhwc => want.permuted_axes(vec![0, 2, 3, 1]).as_standard_layout().to_owned(),
        };
        assert_eq!(x.shape(), want.shape(), "{model:?}");
        assert_close(&x.iter().copied().collect::<Vec<_>>(), &want.iter().copied().collect::<Vec<_>>());
        assert_eq!(y, Some(idx[..64].iter().map(|&i| digits.label(i)).collect()));
    }
    let all = Dataset::open("demo").expect("demo");
    let (calib, held) = all.calibration_split(Holdout::Fraction(0.5), 1).expect("split");
    assert_eq!(calib.len(), digits.indices(Split::Train).len());
    assert_eq!(held.len(), digits.indices(Split::Val).len());
    assert_eq!(calib.labels().expect("l")[0], digits.label(digits.indices(Split::Train)[0]));
    let splits = Dataset::demo_splits().expect("splits");
    assert_eq!(splits.report.len(), digits.indices(Split::Test).len());
    assert_eq!(all.len(), 1797);
    assert!(err_text(Dataset::open("demo:nope")).contains("demo:nope"));
}

#[test]
fn splits_and_subsets_are_disjoint_and_deterministic() {
    let (calib, held) = split_indices(100, Holdout::Fraction(0.25), 7).expect("split");
    assert_eq!(held.len(), 25);
    assert_eq!(calib.len(), 75);
    let mut all: Vec<usize> = calib.iter().chain(&held).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert!(held.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(split_indices(100, Holdout::Fraction(0.25), 7).expect("again"), (calib.clone(), held.clone()));
    assert_ne!(split_indices(100, Holdout::Fraction(0.25), 8).expect("seed 8").1, held);
    assert_ne!(held, (0..25).collect::<Vec<_>>(), "the split should be shuffled");
    assert_eq!(split_indices(10, Holdout::Count(3), 1).expect("count").1.len(), 3);
    assert!(split_indices(10, Holdout::Count(10), 1).is_err());
    assert!(split_indices(1, Holdout::Fraction(0.5), 1).is_err());
    assert!(split_indices(10, Holdout::Fraction(1.5), 1).is_err());
    assert_eq!("20%".parse::<Holdout>(), Ok(Holdout::Fraction(0.2)));
    assert_eq!("100".parse::<Holdout>(), Ok(Holdout::Count(100)));

    let data = Dataset::open("demo:train").expect("demo");
    let first = data.subset(Some(10), None);
    assert_eq!(first.labels(), data.labels().map(|l| l[..10].to_vec()));
    let a = data.subset(Some(10), Some(3));
    let b = data.subset(Some(10), Some(3));
    assert_eq!(a.len(), 10);
    assert_eq!(a.labels(), b.labels());
    assert_ne!(a.describe(0), first.describe(9), "a seeded subset should not be the first items");
    assert_eq!(data.subset(None, Some(3)).len(), data.len());
    let (c, h) = data.split(Holdout::Count(100), 5).expect("split");
    assert_eq!((c.len(), h.len()), (data.len() - 100, 100));
    let names: std::collections::HashSet<String> = (0..c.len()).map(|i| c.describe(i)).collect();
    assert!((0..h.len()).all(|i| !names.contains(&h.describe(i))));
}

#[test]
fn folder_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty_dir");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::write(empty.join("readme.txt"), "x").expect("txt");
    let e = err_text(Dataset::open(empty.to_str().expect("utf8")));
    assert!(e.contains("empty_dir") && e.contains("no images"), "{e}");

    let tree = dir.path().join("tree");
    gray_png(&tree.join("a/1.png"), 1, 1, |_, _| 0);
    std::fs::create_dir_all(tree.join("b_empty")).expect("mkdir");
    let e = err_text(Dataset::open(tree.to_str().expect("utf8")));
    assert!(e.contains("b_empty") && e.contains("no images"), "{e}");

    let mixed = dir.path().join("mixed");
    gray_png(&mixed.join("a/1.png"), 1, 1, |_, _| 0);
    gray_png(&mixed.join("loose.png"), 1, 1, |_, _| 0);
    let e = err_text(Dataset::image_folder(&mixed));
    assert!(e.contains("loose.png"), "{e}");

    let e = err_text(Dataset::open(dir.path().join("missing_dir").to_str().expect("utf8")));
    assert!(e.contains("missing_dir"), "{e}");
}

#[test]
fn image_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    gray_png(&dir.path().join("a_good.png"), 2, 2, |_, _| 0);
    std::fs::write(dir.path().join("b_corrupt.png"), b"\x89PNG\r\n\x1a\n not really").expect("corrupt");
    let data = Dataset::image_files(dir.path()).expect("open");
    let pre = pre_from(&["--channels", "1"], None).expect("pre");
    let e = err_text(data.load_all(&pre));
    assert!(e.contains("b_corrupt.png") && e.contains("decode"), "{e}");
    // The iterator stops after the error.
    let mut it = data.batches(&pre, 1);
    assert!(it.next().expect("first").is_ok());
    assert!(it.next().expect("second").is_err());
    assert!(it.next().is_none());

    // Mixed sizes without a resize rule (and without a model size).
    let dir = tempfile::tempdir().expect("tempdir");
    gray_png(&dir.path().join("a_small.png"), 2, 2, |_, _| 0);
    gray_png(&dir.path().join("b_big.png"), 3, 3, |_, _| 0);
    let data = Dataset::image_files(dir.path()).expect("open");
    let e = err_text(data.load_all(&pre));
    assert!(e.contains("b_big.png") && e.contains("a_small.png") && e.contains("3x3"), "{e}");
    // With the model's size but no resize rule.
    let pre = pre_from(&[], Some(&[1, 1, 2, 2])).expect("pre");
    let e = err_text(data.load_all(&pre));
    assert!(e.contains("b_big.png") && e.contains("2x2") && e.contains("resize"), "{e}");
    // A resize rule fixes it.
    let pre = pre_from(&["--size", "2"], Some(&[1, 1, 2, 2])).expect("pre");
    assert_eq!(data.load_all(&pre).expect("resized").0.shape(), &[2, 1, 2, 2]);
    // A crop larger than the image.
    let pre = pre_from(&["--crop", "3", "--layout", "nchw"], Some(&[1, 1, 3, 3])).expect("pre");
    let e = err_text(data.load_all(&pre));
    assert!(e.contains("a_small.png") && e.contains("smaller than the center crop"), "{e}");
}

#[test]
fn inconsistent_hand_built_preprocess_and_metadata_are_errors() {
    let mut pre = pre_from(&["--scale", "1"], Some(&[1, 3, 1, 1])).expect("pre");
    let img = rba_host::data::RawImage { h: 1, w: 1, c: 3, data: vec![1.0, 2.0, 3.0] };
    assert_close(&pre.apply(&img, "x.png").expect("ok").1, &[1.0, 2.0, 3.0]);
    pre.mean = vec![0.0, 0.0];
    assert!(err_text(pre.apply(&img, "x.png")).contains("2 mean"));
    pre.mean = vec![0.0];
    let short = rba_host::data::RawImage { h: 2, w: 1, c: 3, data: vec![1.0, 2.0, 3.0] };
    assert!(err_text(pre.apply(&short, "short.png")).contains("short.png"));
    let e = err_text(PreprocessSpec::from_metadata_json(r#"{"layout":"chwn"}"#, "m.onnx (metadata)"));
    assert!(e.contains("m.onnx") && e.contains("chwn"), "{e}");
    let e = err_text(PreprocessSpec::from_metadata_json(r#"{"channels":0}"#, "m.onnx"));
    assert!(e.contains("channels"), "{e}");
}
