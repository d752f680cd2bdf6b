//! Diagnostic for parity with llama.cpp (see scripts/diag/): either applies one quantized
//! weight of a GGUF file to raw f32 rows, or writes the last position's logits of a prompt.
//!
//! `parity_probe matmul FILE.gguf TENSOR IN.f32 OUT.f32 K [candle]`
//! `parity_probe logits FILE.gguf ID,ID,... OUT.f32`
use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Tensor};
use juris_ml::gguf::GgufFile;
use juris_ml::models::decoder_layers::WeightMode;
use juris_ml::models::ggml_matmul;
use juris_ml::GgufGenerator;

fn write(path: &str, y: &[f32]) {
    let out: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, out).unwrap();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&a[2]);
    if a[1] == "logits" {
        let g = GgufGenerator::load(path, WeightMode::Quantized, &Device::Cpu).unwrap();
        let mut cache = g.model().new_cache();
        let mut l = None;
        // "prompt ids;next id;...": the prompt in one step, then one token per step.
        for chunk in a[3].split(';') {
            let ids: Vec<u32> = chunk.split(',').map(|s| s.parse().unwrap()).collect();
            l = Some(g.model().forward_step(&ids, &mut cache).unwrap());
        }
        let l = l.unwrap();
        write(&a[4], &l.to_vec1::<f32>().unwrap());
        return;
    }
    let g = GgufFile::open(path).unwrap();
    let q = g.qtensor(&a[3], &Device::Cpu).unwrap();
    let bytes = std::fs::read(&a[4]).unwrap();
    let xs: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let k: usize = a[6].parse().unwrap();
    let x = Tensor::from_vec(xs.clone(), (xs.len() / k, k), &Device::Cpu).unwrap();
    let y = if a.get(7).map(String::as_str) == Some("candle") {
        QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap()
    } else {
        ggml_matmul::forward(&q, &x)
            .unwrap()
            .expect("type not covered")
    };
    write(&a[5], &y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}
