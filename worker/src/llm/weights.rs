//! Where a Llama's weights come from: a GGUF file or a Hugging Face safetensors directory,
//! both seen through Hugging Face tensor names; and saving in that layout.

use super::config::{LlamaConfig, RopePairing};
use super::gguf::GgufFile;
use super::quant::GgmlType;
use anyhow::{Context, Result, bail, ensure};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Hugging Face names of Llama tensors.
pub mod hf_names {
    pub const EMBEDDING: &str = "model.embed_tokens.weight";
    pub const FINAL_NORM: &str = "model.norm.weight";
    pub const HEAD: &str = "lm_head.weight";

    /// Names of one decoder layer's tensors.
    pub struct Layer(pub usize);

    impl Layer {
        fn name(&self, rest: &str) -> String {
            format!("model.layers.{}.{rest}", self.0)
        }
        pub fn attention_norm(&self) -> String {
            self.name("input_layernorm.weight")
        }
        pub fn q(&self) -> String {
            self.name("self_attn.q_proj.weight")
        }
        pub fn k(&self) -> String {
            self.name("self_attn.k_proj.weight")
        }
        pub fn v(&self) -> String {
            self.name("self_attn.v_proj.weight")
        }
        pub fn o(&self) -> String {
            self.name("self_attn.o_proj.weight")
        }
        pub fn mlp_norm(&self) -> String {
            self.name("post_attention_layernorm.weight")
        }
        pub fn gate(&self) -> String {
            self.name("mlp.gate_proj.weight")
        }
        pub fn up(&self) -> String {
            self.name("mlp.up_proj.weight")
        }
        pub fn down(&self) -> String {
            self.name("mlp.down_proj.weight")
        }
    }
}

/// A tensor by name: values (row-major) and shape.
pub type NamedTensor = (String, Vec<f32>, Vec<usize>);

/// Named `f32` tensors in Hugging Face naming and layout.
pub trait WeightSource {
    /// Values (row-major) and shape of `name`.
    fn tensor(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)>;
    fn contains(&self, name: &str) -> bool;
    /// The checkpoint, for error messages.
    fn describe(&self) -> String;
    /// The tensor in its ggml block encoding, when the checkpoint stores it quantized.
    fn blocks(&self, _name: &str) -> Option<(GgmlType, &[u8], Vec<usize>)> {
        None
    }
}

/// GGUF `llama` tensor names mapped to Hugging Face names.
fn gguf_name(hf: &str) -> Option<String> {
    Some(match hf {
        hf_names::EMBEDDING => "token_embd.weight".into(),
        hf_names::FINAL_NORM => "output_norm.weight".into(),
        hf_names::HEAD => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (layer, rest) = rest.split_once('.')?;
            let part = match rest {
                "input_layernorm.weight" => "attn_norm",
                "self_attn.q_proj.weight" => "attn_q",
                "self_attn.k_proj.weight" => "attn_k",
                "self_attn.v_proj.weight" => "attn_v",
                "self_attn.o_proj.weight" => "attn_output",
                "post_attention_layernorm.weight" => "ffn_norm",
                "mlp.gate_proj.weight" => "ffn_gate",
                "mlp.up_proj.weight" => "ffn_up",
                "mlp.down_proj.weight" => "ffn_down",
                _ => return None,
            };
            format!("blk.{layer}.{part}.weight")
        }
    })
}

impl WeightSource for GgufFile {
    fn tensor(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let gguf = gguf_name(name).with_context(|| {
            format!("{}: no GGUF name for tensor {name}", self.path().display())
        })?;
        self.dequantize(&gguf)
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|gguf| self.tensor_info(&gguf).is_some())
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn blocks(&self, name: &str) -> Option<(GgmlType, &[u8], Vec<usize>)> {
        self.raw(&gguf_name(name)?).ok()
    }
}

/// A Hugging Face checkpoint directory: `model.safetensors`, or shards listed in
/// `model.safetensors.index.json`.
pub struct SafetensorsDir {
    dir: PathBuf,
    /// Shard file contents, by file name.
    shards: BTreeMap<String, Vec<u8>>,
    /// Tensor name → shard file name.
    index: HashMap<String, String>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("reading {}", index_path.display()))?;
            let raw: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", index_path.display()))?;
            let map = raw
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: no weight_map object", index_path.display()))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec!["model.safetensors".into()]
        };
        let mut shards = BTreeMap::new();
        let mut index = HashMap::new();
        for file in files {
            let path = dir.join(&file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let names = SafeTensors::deserialize(&bytes)
                .with_context(|| format!("{}: not a safetensors file", path.display()))?
                .names()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            for name in names {
                index.insert(name, file.clone());
            }
            shards.insert(file, bytes);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
        })
    }
}

impl WeightSource for SafetensorsDir {
    fn tensor(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let file = self
            .index
            .get(name)
            .with_context(|| format!("{}: no tensor {name}", self.dir.display()))?;
        let path = self.dir.join(file);
        let tensors = SafeTensors::deserialize(&self.shards[file])
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let view = tensors
            .tensor(name)
            .with_context(|| format!("{}: no tensor {name}", path.display()))?;
        Ok((
            crate::weights::view_to_f32(&view, name, &path)?,
            view.shape().to_vec(),
        ))
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// Writes `config` (as `config.json`) and `tensors` (as one F32 `model.safetensors`) into `dir`
/// in Hugging Face layout; Q and K must use half pairing (Hugging Face's).
pub fn save_hf(dir: &Path, config: &LlamaConfig, tensors: &[NamedTensor]) -> Result<()> {
    if config.rope_pairing != RopePairing::Half {
        bail!("saving in Hugging Face layout needs half rope pairing; convert the model first");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut json = serde_json::to_value(config)?;
    let object = json
        .as_object_mut()
        .context("config serialises to an object")?;
    object.insert("model_type".into(), "llama".into());
    object.insert(
        "architectures".into(),
        serde_json::json!(["LlamaForCausalLM"]),
    );
    object.insert("torch_dtype".into(), "float32".into());
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", config_path.display()))?;

    write_f32_safetensors(&dir.join("model.safetensors"), tensors)
}

/// Writes `tensors` as one F32 safetensors file.
pub fn write_f32_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    let bytes = f32_safetensors_bytes(tensors)?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The bytes of a safetensors file holding `tensors` as F32.
pub fn f32_safetensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, values, _)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, _, shape), data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .with_context(|| format!("tensor {name}"))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).context("serialising safetensors")
}

/// A tensor's values (row-major) and shape, read back from the device.
pub fn tensor_values<B: burn::tensor::backend::Backend, const D: usize>(
    tensor: burn::tensor::Tensor<B, D>,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))?;
    Ok((values, shape))
}

/// Reorders the rows of a Q or K weight (`[heads * head_dim, in]`, row-major) from half
/// pairing to interleaved pairing, as llama.cpp's converter does; `inverse` undoes it.
pub fn permute_for_pairing(
    values: &[f32],
    heads: usize,
    columns: usize,
    inverse: bool,
) -> Result<Vec<f32>> {
    ensure!(
        heads > 0 && values.len().is_multiple_of(heads * columns),
        "a [{} values] matrix does not split into {heads} heads of rows of {columns}",
        values.len()
    );
    let head_dim = values.len() / columns / heads;
    ensure!(
        head_dim.is_multiple_of(2),
        "head dimension {head_dim} is odd"
    );
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for head in 0..heads {
        for i in 0..half {
            for part in 0..2 {
                let half_row = head * head_dim + part * half + i;
                let interleaved_row = head * head_dim + 2 * i + part;
                let (from, to) = if inverse {
                    (interleaved_row, half_row)
                } else {
                    (half_row, interleaved_row)
                };
                out[to * columns..(to + 1) * columns]
                    .copy_from_slice(&values[from * columns..(from + 1) * columns]);
            }
        }
    }
    Ok(out)
}

/// Tensors held in memory: random test models, and weights converted by hand.
#[derive(Default)]
pub struct MemoryWeights {
    pub tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
}

impl MemoryWeights {
    /// Every tensor a model of `config` needs, drawn from a seeded normal-ish distribution
    /// (norms near 1), in Hugging Face layout.
    pub fn random(config: &LlamaConfig, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut weights = Self::default();
        let h = config.hidden_size;
        let hd = config.head_dim();
        let q_out = config.num_attention_heads * hd;
        let kv_out = config.kv_heads() * hd;
        let inter = config.intermediate_size;
        let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let values = (0..n)
                .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
                .collect();
            weights.tensors.insert(name, (values, shape));
        };
        add(
            hf_names::EMBEDDING.into(),
            vec![config.vocab_size, h],
            1.0,
            0.0,
        );
        for layer in 0..config.num_hidden_layers {
            let n = hf_names::Layer(layer);
            let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
            add(n.attention_norm(), vec![h], 0.1, 1.0);
            add(n.q(), vec![q_out, h], w(h), 0.0);
            add(n.k(), vec![kv_out, h], w(h), 0.0);
            add(n.v(), vec![kv_out, h], w(h), 0.0);
            add(n.o(), vec![h, q_out], w(q_out), 0.0);
            add(n.mlp_norm(), vec![h], 0.1, 1.0);
            add(n.gate(), vec![inter, h], w(h), 0.0);
            add(n.up(), vec![inter, h], w(h), 0.0);
            add(n.down(), vec![h, inter], w(inter), 0.0);
        }
        add(hf_names::FINAL_NORM.into(), vec![h], 0.1, 1.0);
        if !config.tie_word_embeddings {
            add(
                hf_names::HEAD.into(),
                vec![config.vocab_size, h],
                1.0 / (h as f32).sqrt(),
                0.0,
            );
        }
        weights
    }
}

impl WeightSource for MemoryWeights {
    fn tensor(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        self.tensors
            .get(name)
            .cloned()
            .with_context(|| format!("in-memory weights: no tensor {name}"))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn describe(&self) -> String {
        "in-memory weights".into()
    }
}
