//! LoRA adapters: trainable low-rank updates `x @ A @ B * (alpha / rank)` beside frozen Llama
//! projections, as Burn modules.
//!
//! The base model keeps its weights as plain tensors, never parameters, so training the
//! adapters under autodiff cannot touch them. Adapters can be merged into the base for
//! inference, and saved and loaded alone in the PEFT layout (`adapter_model.safetensors` +
//! `adapter_config.json`), so Python users load them with `peft`.

use super::model::Llama;
use super::weights::{NamedTensor, f32_safetensors_bytes, tensor_values};
use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The file names of an adapter in PEFT's layout.
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";
pub const PEFT_CONFIG: &str = "adapter_config.json";

/// An adapter's two files in PEFT's layout, in memory.
#[derive(Debug, Clone)]
pub struct PeftFiles {
    /// `adapter_model.safetensors`.
    pub weights: Vec<u8>,
    /// `adapter_config.json`.
    pub config: String,
}

/// A projection an adapter can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module name PEFT and Hugging Face use.
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        }
    }

    /// Accepts the manifest's short names (`q`, `gate`) and PEFT's (`q_proj`, `gate_proj`).
    pub fn parse(name: &str) -> Result<Self> {
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Ok(match short {
            "q" => Target::Q,
            "k" => Target::K,
            "v" => Target::V,
            "o" => Target::O,
            "gate" => Target::Gate,
            "up" => Target::Up,
            "down" => Target::Down,
            other => bail!("LoRA target {other:?} is not one of q, k, v, o, gate, up, down"),
        })
    }
}

/// Rank, scaling and placement of the adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<Target>,
}

impl LoraConfig {
    /// The factor on `x @ A @ B`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// One adapter: `a` is `[in, rank]`, `b` is `[rank, out]`.
#[derive(Module, Debug)]
pub struct LoraPair<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
}

impl<B: Backend> LoraPair<B> {
    /// The update to add to the base projection's output for `x` `[rows, in]`, with inverted
    /// dropout on `x` when `dropout` gives a probability and the RNG to draw masks from.
    pub fn delta(&self, x: Tensor<B, 2>, scale: f32, dropout: Option<&Dropout>) -> Tensor<B, 2> {
        let x = match dropout {
            Some(dropout) => {
                let [rows, columns] = x.dims();
                let keep = dropout.mask(rows * columns);
                let keep =
                    Tensor::<B, 2>::from_data(TensorData::new(keep, [rows, columns]), &x.device());
                x * keep
            }
            None => x,
        };
        x.matmul(self.a.val())
            .matmul(self.b.val())
            .mul_scalar(scale)
    }
}

/// The adapters of one decoder layer.
#[derive(Module, Debug)]
pub struct LayerAdapters<B: Backend> {
    pub q: Option<LoraPair<B>>,
    pub k: Option<LoraPair<B>>,
    pub v: Option<LoraPair<B>>,
    pub o: Option<LoraPair<B>>,
    pub gate: Option<LoraPair<B>>,
    pub up: Option<LoraPair<B>>,
    pub down: Option<LoraPair<B>>,
}

impl<B: Backend> LayerAdapters<B> {
    pub fn get(&self, target: Target) -> Option<&LoraPair<B>> {
        match target {
            Target::Q => self.q.as_ref(),
            Target::K => self.k.as_ref(),
            Target::V => self.v.as_ref(),
            Target::O => self.o.as_ref(),
            Target::Gate => self.gate.as_ref(),
            Target::Up => self.up.as_ref(),
            Target::Down => self.down.as_ref(),
        }
    }

    fn slot(&mut self, target: Target) -> &mut Option<LoraPair<B>> {
        match target {
            Target::Q => &mut self.q,
            Target::K => &mut self.k,
            Target::V => &mut self.v,
            Target::O => &mut self.o,
            Target::Gate => &mut self.gate,
            Target::Up => &mut self.up,
            Target::Down => &mut self.down,
        }
    }

    fn empty() -> Self {
        Self {
            q: None,
            k: None,
            v: None,
            o: None,
            gate: None,
            up: None,
            down: None,
        }
    }
}

/// Every layer's adapters, with the scaling they were trained with.
#[derive(Module, Debug)]
pub struct LoraAdapters<B: Backend> {
    pub layers: Vec<LayerAdapters<B>>,
    #[module(skip)]
    pub scale: f32,
    /// Dropout on the adapters' input while training (PEFT's `lora_dropout`).
    #[module(skip)]
    pub dropout: f32,
    /// Set by the training loop around each training forward pass only (validation and
    /// inference see the adapters as they are), with an RNG seeded for that step.
    #[module(skip)]
    pub training: Option<Dropout>,
}

/// Dropout masks drawn from a seeded RNG of their own: the same (seed, forward pass) gives
/// the same masks whatever else runs, so a resumed training run repeats its steps exactly.
#[derive(Debug, Clone)]
pub struct Dropout {
    pub probability: f32,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl Dropout {
    pub fn new(probability: f32, seed: u64) -> Self {
        Self {
            probability,
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
        }
    }

    /// `n` keep-factors of inverted dropout: 0 with the dropout probability, else
    /// `1 / (1 - probability)`.
    fn mask(&self, n: usize) -> Vec<f32> {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        crate::nn::keep_factors(&mut *rng, n, self.probability)
    }
}

/// `[in, out]` of a target's projection in `model`.
fn projection_shape<B: Backend>(model: &Llama<B>, target: Target) -> (usize, usize) {
    let c = &model.config;
    let (h, hd, inter) = (c.hidden_size, c.head_dim(), c.intermediate_size);
    match target {
        Target::Q => (h, c.num_attention_heads * hd),
        Target::K | Target::V => (h, c.kv_heads() * hd),
        Target::O => (c.num_attention_heads * hd, h),
        Target::Gate | Target::Up => (h, inter),
        Target::Down => (inter, h),
    }
}

impl<B: Backend> LoraAdapters<B> {
    /// The dropout that applies now: none unless training with a non-zero probability.
    pub fn active_dropout(&self) -> Option<&Dropout> {
        self.training.as_ref().filter(|d| d.probability > 0.0)
    }

    /// Fresh adapters for `model`: `A` uniform in ±1/sqrt(in), drawn from `seed` alone (not the
    /// backend's shared RNG, so concurrent work cannot change them), `B` zero, so training
    /// starts from the base model exactly (PEFT's initialisation).
    pub fn init(
        model: &Llama<B>,
        config: &LoraConfig,
        seed: u64,
        device: &Device<B>,
    ) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        ensure!(config.rank > 0, "LoRA rank must be at least 1");
        ensure!(
            !config.targets.is_empty(),
            "LoRA needs at least one target projection"
        );
        let mut layers = Vec::with_capacity(model.config.num_hidden_layers);
        for _ in 0..model.config.num_hidden_layers {
            let mut layer = LayerAdapters::empty();
            for &target in &config.targets {
                let (input, output) = projection_shape(model, target);
                let bound = 1.0 / (input as f32).sqrt();
                let values: Vec<f32> = (0..input * config.rank)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                *layer.slot(target) = Some(LoraPair {
                    a: Param::from_tensor(Tensor::from_data(
                        TensorData::new(values, [input, config.rank]),
                        device,
                    )),
                    b: Param::from_tensor(Tensor::zeros([config.rank, output], device)),
                });
            }
            layers.push(layer);
        }
        Ok(Self {
            layers,
            scale: config.scale(),
            dropout: config.dropout,
            training: None,
        })
    }

    /// The adapted targets.
    pub fn targets(&self) -> Vec<Target> {
        Target::ALL
            .into_iter()
            .filter(|&t| self.layers.first().is_some_and(|l| l.get(t).is_some()))
            .collect()
    }

    /// PEFT tensor names and `[out, in]`-style shapes: `lora_A` is `[rank, in]`, `lora_B` is
    /// `[out, rank]`.
    fn peft_name(layer: usize, target: Target, which: &str) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{}.lora_{which}.weight",
            target.parent(),
            target.module_name()
        )
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir` (PEFT layout).
    pub fn save_peft(&self, dir: &Path, config: &LoraConfig, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = self.to_peft(config, base_model)?;
        for (name, bytes) in [
            (PEFT_WEIGHTS, files.weights),
            (PEFT_CONFIG, files.config.into_bytes()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The two files of the PEFT layout, in memory (the distill stage writes them to a store).
    pub fn to_peft(&self, config: &LoraConfig, base_model: &str) -> Result<PeftFiles> {
        let mut tensors: Vec<NamedTensor> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for target in Target::ALL {
                let Some(pair) = layer.get(target) else {
                    continue;
                };
                for (which, tensor) in [("A", pair.a.val()), ("B", pair.b.val())] {
                    // Ours are [in, rank] and [rank, out]; PEFT stores nn.Linear weights [out, in].
                    let (values, shape) = tensor_values(tensor.transpose())?;
                    tensors.push((Self::peft_name(i, target, which), values, shape));
                }
            }
        }
        let peft_config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": config.rank,
            "lora_alpha": config.alpha,
            "lora_dropout": config.dropout,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "target_modules": config.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        });
        Ok(PeftFiles {
            weights: f32_safetensors_bytes(&tensors)?,
            config: serde_json::to_string_pretty(&peft_config)?,
        })
    }

    /// Reads a PEFT LoRA adapter directory for `model` (`adapter_model.safetensors` and
    /// `adapter_config.json`; slim's job layout names them `adapter.safetensors` and
    /// `adapter.json`, which are accepted too).
    pub fn load_peft(
        dir: &Path,
        model: &Llama<B>,
        device: &Device<B>,
    ) -> Result<(Self, LoraConfig)> {
        let pick = |names: [&str; 2]| {
            let paths = names.map(|n| dir.join(n));
            paths
                .iter()
                .find(|p| p.exists())
                .cloned()
                .unwrap_or_else(|| paths[0].clone())
        };
        let config_path = pick([PEFT_CONFIG, "adapter.json"]);
        let weights_path = pick([PEFT_WEIGHTS, "adapter.safetensors"]);
        let config = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let weights = std::fs::read(&weights_path)
            .with_context(|| format!("reading {}", weights_path.display()))?;
        Self::from_peft(
            &weights,
            &config,
            (
                &weights_path.display().to_string(),
                &config_path.display().to_string(),
            ),
            model,
            device,
        )
    }

    /// Reads the two files of a PEFT adapter from memory; `names` (weights, config) name them
    /// in errors.
    pub fn from_peft(
        weights: &[u8],
        config: &str,
        names: (&str, &str),
        model: &Llama<B>,
        device: &Device<B>,
    ) -> Result<(Self, LoraConfig)> {
        let (weights_name, config_name) = names;
        let raw: serde_json::Value =
            serde_json::from_str(config).with_context(|| format!("{config_name}: not JSON"))?;
        let field = |key: &str| {
            raw.get(key)
                .with_context(|| format!("{config_name}: no {key}"))
        };
        let peft_type = field("peft_type")?.as_str().unwrap_or_default();
        ensure!(
            peft_type == "LORA",
            "{config_name}: peft_type {peft_type:?} is not LORA"
        );
        if let Some(true) = raw.get("use_rslora").and_then(|v| v.as_bool()) {
            bail!("{config_name}: rsLoRA scaling is not supported");
        }
        let targets = match field("target_modules")? {
            serde_json::Value::Array(names) => names
                .iter()
                .map(|n| Target::parse(n.as_str().unwrap_or_default()))
                .collect::<Result<Vec<_>>>(),
            serde_json::Value::String(name) => Target::parse(name).map(|t| vec![t]),
            other => bail!("{config_name}: target_modules {other} is not a list"),
        }
        .with_context(|| config_name.to_string())?;
        let config = LoraConfig {
            rank: field("r")?
                .as_u64()
                .with_context(|| format!("{config_name}: r is not an integer"))?
                as usize,
            alpha: field("lora_alpha")?
                .as_f64()
                .with_context(|| format!("{config_name}: lora_alpha is not a number"))?
                as f32,
            dropout: raw
                .get("lora_dropout")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0) as f32,
            targets,
        };
        let tensors = safetensors::SafeTensors::deserialize(weights)
            .with_context(|| format!("{weights_name}: not a safetensors file"))?;
        let weights_path = Path::new(weights_name);
        let read = |name: &str, shape: [usize; 2]| -> Result<Tensor<B, 2>> {
            // PEFT sometimes saves names with the adapter name (".default") in them.
            let view = tensors
                .tensor(name)
                .or_else(|_| tensors.tensor(&name.replace(".weight", ".default.weight")))
                .with_context(|| format!("{weights_name}: no tensor {name}"))?;
            ensure!(
                view.shape() == shape,
                "{weights_name}: {name} has shape {:?}, expected {shape:?}",
                view.shape()
            );
            let values = crate::weights::view_to_f32(&view, name, weights_path)?;
            // Stored [out, in]; ours are [in, out].
            Ok(Tensor::<B, 2>::from_data(TensorData::new(values, shape), device).transpose())
        };
        let mut layers = Vec::with_capacity(model.config.num_hidden_layers);
        for i in 0..model.config.num_hidden_layers {
            let mut layer = LayerAdapters::empty();
            for &target in &config.targets {
                let (input, output) = projection_shape(model, target);
                *layer.slot(target) = Some(LoraPair {
                    a: Param::from_tensor(read(
                        &Self::peft_name(i, target, "A"),
                        [config.rank, input],
                    )?),
                    b: Param::from_tensor(read(
                        &Self::peft_name(i, target, "B"),
                        [output, config.rank],
                    )?),
                });
            }
            layers.push(layer);
        }
        Ok((
            Self {
                layers,
                scale: config.scale(),
                dropout: config.dropout,
                training: None,
            },
            config,
        ))
    }
}
