//! Decoder LoRA against Hugging Face transformers + peft on the real GGUF models (fixtures
//! written by `scripts/fixtures/qlora_fixtures.py`): an adapter given by a closed formula,
//! written by juris in the PEFT format, gives in juris the logits that peft gives with the
//! same adapter on the transformers model of the same weights — for SmolLM2 (a `llama` file,
//! whose q/k rows llama.cpp permuted) and Gemma 3 (not permuted). And the merged model
//! exported as F32 / Q8_0 / Q4_0 GGUF loads in juris and gives logits close to the merged
//! f32 model. Skips, saying so, when a model file is absent.
//!
//! With `JURIS_QLORA_EXPORT_DIR=DIR` the SmolLM2 adapter, exports and juris logits are kept
//! in DIR for `qlora_fixtures.py --check-export DIR` (llama.cpp and peft on juris's files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use juris_ml::decoder_lora::{
    export_merged_gguf, load_decoder_with_adapter, ExportFormat, DECODER_LORA_TARGETS,
};
use juris_ml::gguf::GgufFile;
use juris_ml::lora::{LoraAdapter, LoraConfig, LoraPair};
use juris_ml::models::decoder::{load_decoder, DecoderLm};
use juris_ml::models::decoder_layers::{hf_module_path, WeightMode};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/qlora_{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn model_path(fx: &Value) -> Option<PathBuf> {
    let p = root().join(fx["model"].as_str().unwrap());
    if p.exists() {
        Some(p)
    } else {
        println!(
            "skipped: {} missing; run bash scripts/fetch-models.sh",
            p.display()
        );
        None
    }
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The fixture's formula (see the script): element `i` of module number `m` (sorted paths).
fn formula(n: usize, m: usize, a: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let (i, m) = (i as f64, m as f64);
            let v = if a {
                0.05 * (0.7 * i + 1.3 * m + 0.5).sin()
            } else {
                0.05 * (0.3 * i + 0.9 * m + 0.1).cos()
            };
            v as f32
        })
        .collect()
}

/// The formula adapter (r 2, α 4, the 7 projections of every block) for the model in `g`,
/// with module shapes read from the file's tensor directory.
fn formula_adapter(g: &GgufFile) -> LoraAdapter {
    let mut shapes = BTreeMap::new();
    for name in g.tensor_names() {
        let Some(base) = name.strip_suffix(".weight") else {
            continue;
        };
        let Some(path) = hf_module_path(base) else {
            continue;
        };
        if path == "lm_head" {
            continue;
        }
        let s = g.tensor_shape(name).unwrap();
        shapes.insert(path, (s[0], s[1]));
    }
    let r = 2;
    let mut config = LoraConfig::new(r, 4.0, 0.0, DECODER_LORA_TARGETS, "formula");
    config.task_type = Some("CAUSAL_LM".into());
    let mut modules = BTreeMap::new();
    for (m, (path, (out, inp))) in shapes.into_iter().enumerate() {
        let a = Tensor::from_vec(formula(r * inp, m, true), (r, inp), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(formula(out * r, m, false), (out, r), &Device::Cpu).unwrap();
        modules.insert(path, LoraPair { a, b });
    }
    LoraAdapter { config, modules }
}

/// Logits `[seq, vocab]` of the prompt.
fn logits(m: &dyn DecoderLm, ids: &[u32]) -> Tensor {
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    let mask = x.ones_like().unwrap();
    let h = m.forward_hidden(&x, &mask).unwrap();
    m.logits(&h).unwrap().i(0).unwrap()
}

/// Max |juris - reference| over the fixture's probe ids, for key `adapted` or `base`, and
/// the share of positions whose top-1 (among the probe ids) agrees.
fn against_fixture(fx: &Value, got: &Tensor, key: &str) -> (f32, f32) {
    let mut worst = 0f32;
    let mut agree = 0;
    let positions = fx["positions"].as_array().unwrap();
    for p in positions {
        let pos = p["position"].as_u64().unwrap() as usize;
        let probes = u32s(&p["probe_ids"]);
        let want = f32s(&p[key]);
        let row: Vec<f32> = got.i(pos).unwrap().to_vec1().unwrap();
        let mine: Vec<f32> = probes.iter().map(|&t| row[t as usize]).collect();
        for (a, b) in mine.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap()
                .0
        };
        if argmax(&mine) == argmax(&want) {
            agree += 1;
        }
    }
    (worst, agree as f32 / positions.len() as f32)
}

fn export_dir(tmp: &Path) -> PathBuf {
    match std::env::var_os("JURIS_QLORA_EXPORT_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
        None => tmp.to_path_buf(),
    }
}

fn check_against_peft(name: &str) {
    let fx = fixture(name);
    let Some(path) = model_path(&fx) else {
        return;
    };
    let g = GgufFile::open(&path).unwrap();
    let adapter = formula_adapter(&g);
    assert_eq!(
        adapter.modules.len() as u64,
        fx["adapter"]["modules"].as_u64().unwrap()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    adapter.save(&dir).unwrap();
    // juris writes the keys and shapes peft writes.
    let st = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert_eq!(st.len() as u64, fx["peft_tensor_count"].as_u64().unwrap());
    for (key, shape) in fx["peft_layer0_tensors"].as_object().unwrap() {
        let t = st
            .get(key)
            .unwrap_or_else(|| panic!("{name}: juris wrote no tensor '{key}'"));
        let shape: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims(), &shape[..], "{name}: {key}");
    }
    let ids = u32s(&fx["ids"]);
    let m = load_decoder_with_adapter(&g, WeightMode::F32, Some(&dir), &Device::Cpu).unwrap();
    let got = logits(m.as_ref(), &ids);
    let (d, agree) = against_fixture(&fx, &got, "adapted");
    // How far the adapter moves the reference logits (at the probe ids): the parity must be
    // far tighter than that for the check to mean anything.
    let mut moved = 0f32;
    for p in fx["positions"].as_array().unwrap() {
        for (a, b) in f32s(&p["adapted"]).iter().zip(f32s(&p["base"])) {
            moved = moved.max((a - b).abs());
        }
    }
    println!(
        "{name}: juris f32 + adapter vs transformers + peft: max |logit diff| {d:.2e}, top-1 \
         agreement {agree:.2} (the adapter moves the logits by up to {moved:.2})"
    );
    // Same f32 weights on both sides; differences come from summation order over ~20
    // layers (decoder_parity sees the same size without an adapter).
    assert!(d < 2e-2, "{name}: max |logit diff| {d}");
    assert!(
        moved > 50.0 * d,
        "{name}: the adapter moves logits only by {moved}"
    );
    assert_eq!(agree, 1.0, "{name}");
    drop(m);
    // Unmerged on the quantized base: the file's quantized kernels (8-bit activations).
    let q = load_decoder_with_adapter(&g, WeightMode::Quantized, Some(&dir), &Device::Cpu).unwrap();
    let got = logits(q.as_ref(), &ids);
    let (dq, agree_q) = against_fixture(&fx, &got, "adapted");
    println!(
        "{name}: juris quantized base + unmerged adapter vs transformers + peft (f32): max \
         |logit diff| {dq:.2e}, top-1 agreement {agree_q:.2}"
    );
    assert!(
        agree_q >= 0.8,
        "{name}: quantized top-1 agreement {agree_q}"
    );
}

#[test]
fn smollm2_adapter_matches_transformers_peft() {
    check_against_peft("smollm2");
}

#[test]
fn gemma3_adapter_matches_transformers_peft() {
    check_against_peft("gemma3");
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Root mean square of `a - b` divided by that of `b` (over all positions and tokens).
fn rel_rms(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b).unwrap().sqr().unwrap().mean_all().unwrap();
    let den = b.sqr().unwrap().mean_all().unwrap();
    (num.to_scalar::<f32>().unwrap() / den.to_scalar::<f32>().unwrap()).sqrt()
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let dot = (a * b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let na = a
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let nb = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    dot / (na * nb).sqrt()
}

fn top1_agreement(a: &Tensor, b: &Tensor) -> f32 {
    let x: Vec<u32> = a.argmax(1).unwrap().to_vec1().unwrap();
    let y: Vec<u32> = b.argmax(1).unwrap().to_vec1().unwrap();
    x.iter().zip(&y).filter(|(p, q)| p == q).count() as f32 / x.len() as f32
}

#[test]
fn smollm2_merged_exports_load_and_match() {
    let fx = fixture("smollm2");
    let Some(path) = model_path(&fx) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = export_dir(tmp.path());
    let g = GgufFile::open(&path).unwrap();
    let dir = out.join("smollm2-adapter");
    formula_adapter(&g).save(&dir).unwrap();
    let ids = u32s(&fx["ids"]);
    let merged = load_decoder_with_adapter(&g, WeightMode::F32, Some(&dir), &Device::Cpu).unwrap();
    let want = logits(merged.as_ref(), &ids);
    drop(merged);
    let base = logits(
        load_decoder(&g, WeightMode::F32, &Device::Cpu)
            .unwrap()
            .as_ref(),
        &ids,
    );
    println!(
        "smollm2: the adapter moves the f32 logits by up to {:.2} (relative RMS {:.3})",
        max_abs(&want, &base),
        rel_rms(&base, &want)
    );
    let mut report = serde_json::Map::new();
    report.insert("ids".into(), serde_json::json!(ids));
    let flat = |t: &Tensor| -> Value {
        serde_json::json!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    report.insert("merged f32 (load_decoder_with_adapter)".into(), flat(&want));
    // The same exports of a zero adapter (B = 0) are the base re-quantized: the yardstick
    // for what re-quantization alone costs.
    let zero_dir = tmp.path().join("zero-adapter");
    let mut zero = formula_adapter(&g);
    for p in zero.modules.values_mut() {
        p.b = p.b.zeros_like().unwrap();
    }
    zero.save(&zero_dir).unwrap();
    for format in [ExportFormat::F32, ExportFormat::Q8_0, ExportFormat::Q4_0] {
        let file = out.join(format!("smollm2-merged-{}.gguf", format.name()));
        export_merged_gguf(&path, &dir, &file, format).unwrap();
        let e = GgufFile::open(&file).unwrap();
        assert_eq!(
            e.string_opt("tokenizer.chat_template").unwrap(),
            g.string_opt("tokenizer.chat_template").unwrap()
        );
        let got = logits(
            load_decoder(&e, WeightMode::F32, &Device::Cpu)
                .unwrap()
                .as_ref(),
            &ids,
        );
        let zero_file = tmp.path().join(format!("zero-{}.gguf", format.name()));
        export_merged_gguf(&path, &zero_dir, &zero_file, format).unwrap();
        let requant = logits(
            load_decoder(
                &GgufFile::open(&zero_file).unwrap(),
                WeightMode::F32,
                &Device::Cpu,
            )
            .unwrap()
            .as_ref(),
            &ids,
        );
        let d = max_abs(&got, &want);
        let rel = rel_rms(&got, &want);
        let agree = top1_agreement(&got, &want);
        let base_cost = rel_rms(&requant, &base);
        // The adapter's effect on the logits in f32 and after export (each against its own
        // base): does the update survive the re-quantization?
        let effect = cosine(&(&got - &requant).unwrap(), &(&want - &base).unwrap());
        println!(
            "smollm2 {}: {} MB; vs the merged f32 model: max |logit diff| {d:.3}, relative RMS \
             {rel:.3}, top-1 agreement {agree:.2}; re-quantizing the base alone costs relative \
             RMS {base_cost:.3}; cosine of the adapter's effect on the logits, export vs f32, \
             {effect:.3}",
            format.name(),
            std::fs::metadata(&file).unwrap().len() / 1_000_000,
        );
        report.insert(format!("juris on export {}", format.name()), flat(&got));
        match format {
            ExportFormat::F32 => assert!(d < 1e-3, "{d}"),
            // The base is Q4_1; Q8_0 keeps its values to within 1/254 of each block's range.
            ExportFormat::Q8_0 => {
                assert!(rel < 0.05 && agree >= 0.95, "Q8_0: {rel} {agree}")
            }
            _ => {}
        }
        // Merging costs no more than re-quantization itself costs the base (Q4_0 re-rounds
        // every weight onto another 4-bit grid: relative RMS ~0.2-0.3 on this 135M model;
        // llama.cpp's own Q4_0 re-quantization of the same file costs about as much), and the
        // adapter's effect survives it.
        assert!(
            rel < 1.5 * base_cost + 0.01,
            "{format:?}: {rel} vs {base_cost}"
        );
        // Each export is deleted once checked (the f32 pair alone is ~1 GB): CI disks are
        // small. Files under JURIS_QLORA_EXPORT_DIR are kept for the llama.cpp check.
        std::fs::remove_file(&zero_file).unwrap();
        if out == tmp.path() {
            std::fs::remove_file(&file).unwrap();
        }
        let min_effect = if format == ExportFormat::Q4_0 {
            0.5
        } else {
            0.95
        };
        assert!(
            effect > min_effect,
            "{format:?}: adapter effect cosine {effect}"
        );
    }
    let q = load_decoder_with_adapter(&g, WeightMode::Quantized, Some(&dir), &Device::Cpu).unwrap();
    report.insert(
        "quantized base + unmerged adapter".into(),
        flat(&logits(q.as_ref(), &ids)),
    );
    std::fs::write(
        out.join("smollm2-juris-logits.json"),
        serde_json::to_string(&report).unwrap(),
    )
    .unwrap();
}

/// The merged model as a Hugging Face folder: transformers names, `llama` q/k rows back in
/// Hugging Face order (checked here against juris's own merged weights; transformers loads
/// the folder in `qlora_fixtures.py --check-export`).
fn check_safetensors_export(name: &str, always: bool) {
    use juris_ml::decoder_lora::export_merged_safetensors;
    use juris_ml::models::decoder_layers::{llama_qk_rows, DecoderLinear};
    let fx = fixture(name);
    let Some(path) = model_path(&fx) else {
        return;
    };
    if !always && std::env::var_os("JURIS_QLORA_EXPORT_DIR").is_none() {
        println!("skipped {name}: runs with JURIS_QLORA_EXPORT_DIR set (writes ~1 GB)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = export_dir(tmp.path());
    let g = GgufFile::open(&path).unwrap();
    let dir = out.join(format!("{name}-adapter"));
    if !dir.exists() {
        formula_adapter(&g).save(&dir).unwrap();
    }
    let hf = out.join(format!("{name}-merged-hf"));
    if hf.exists() {
        std::fs::remove_dir_all(&hf).unwrap();
    }
    export_merged_safetensors(&path, &dir, &hf).unwrap();
    // A second export into the same folder is refused rather than mixed.
    assert!(export_merged_safetensors(&path, &dir, &hf).is_err());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    let st = candle_core::safetensors::load(hf.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(st.len(), g.tensor_names().len());
    assert!(st.contains_key("model.embed_tokens.weight"));
    assert!(st.contains_key("model.layers.0.mlp.down_proj.weight"));
    let merged = load_decoder_with_adapter(&g, WeightMode::F32, Some(&dir), &Device::Cpu).unwrap();
    let arch = g.architecture().unwrap().to_string();
    let heads = cfg["num_attention_heads"].as_u64().unwrap() as usize;
    let kv = cfg["num_key_value_heads"].as_u64().unwrap() as usize;
    let hd = cfg["head_dim"].as_u64().unwrap() as usize;
    for p in merged.projections() {
        let DecoderLinear::Dense { weight, .. } = p.base() else {
            panic!("F32 mode holds dense weights")
        };
        let mut w = st[&format!("{}.weight", p.path())].clone();
        if arch == "llama" && p.path().ends_with("q_proj") {
            let rows = llama_qk_rows(heads, hd);
            w = w
                .index_select(&Tensor::new(rows, &Device::Cpu).unwrap(), 0)
                .unwrap();
        } else if arch == "llama" && p.path().ends_with("k_proj") {
            let rows = llama_qk_rows(kv, hd);
            w = w
                .index_select(&Tensor::new(rows, &Device::Cpu).unwrap(), 0)
                .unwrap();
        }
        assert_eq!(max_abs(&w, weight), 0.0, "{name} {}", p.path());
    }
    println!(
        "{name}: Hugging Face folder {} written ({} tensors, model_type {})",
        hf.display(),
        st.len(),
        cfg["model_type"]
    );
}

#[test]
fn smollm2_merged_safetensors_export() {
    check_safetensors_export("smollm2", true);
}

#[test]
fn gemma3_merged_safetensors_export() {
    check_safetensors_export("gemma3", false);
}
