//! LoRA adapters: trainable low-rank updates `x @ A @ B * (alpha / rank)` beside frozen Llama
//! projections, as Burn modules.
//!
//! The base model keeps its weights as plain tensors, never parameters, so training the
//! adapters under autodiff cannot touch them. Adapters can be merged into the base for
//! inference, and saved and loaded alone in the PEFT layout (`adapter_model.safetensors` +
//! `adapter_config.json`), so Python users load them with `peft`.

use super::model::Llama;
use super::weights::{NamedTensor, tensor_values, write_f32_safetensors};
use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
    /// The update to add to the base projection's output for `x` `[rows, in]`.
    pub fn delta(&self, x: Tensor<B, 2>, scale: f32) -> Tensor<B, 2> {
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
    /// Fresh adapters for `model`: `A` uniform in ±1/sqrt(in) (seeded by the backend's RNG;
    /// call `B::seed` first), `B` zero, so training starts from the base model exactly (PEFT's
    /// initialisation).
    pub fn init(model: &Llama<B>, config: &LoraConfig, device: &Device<B>) -> Result<Self> {
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
                let bound = 1.0 / (input as f64).sqrt();
                *layer.slot(target) = Some(LoraPair {
                    a: Param::from_tensor(Tensor::random(
                        [input, config.rank],
                        Distribution::Uniform(-bound, bound),
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
        write_f32_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
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
        let config_path = dir.join("adapter_config.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&peft_config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        Ok(())
    }

    /// Reads a PEFT LoRA adapter directory for `model`.
    pub fn load_peft(
        dir: &Path,
        model: &Llama<B>,
        device: &Device<B>,
    ) -> Result<(Self, LoraConfig)> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", config_path.display()))?;
        let field = |key: &str| {
            raw.get(key)
                .with_context(|| format!("{}: no {key}", config_path.display()))
        };
        let peft_type = field("peft_type")?.as_str().unwrap_or_default();
        ensure!(
            peft_type == "LORA",
            "{}: peft_type {peft_type:?} is not LORA",
            config_path.display()
        );
        if let Some(true) = raw.get("use_rslora").and_then(|v| v.as_bool()) {
            bail!("{}: rsLoRA scaling is not supported", config_path.display());
        }
        let targets = match field("target_modules")? {
            serde_json::Value::Array(names) => names
                .iter()
                .map(|n| Target::parse(n.as_str().unwrap_or_default()))
                .collect::<Result<Vec<_>>>(),
            serde_json::Value::String(name) => Target::parse(name).map(|t| vec![t]),
            other => bail!(
                "{}: target_modules {other} is not a list",
                config_path.display()
            ),
        }
        .with_context(|| config_path.display().to_string())?;
        let config = LoraConfig {
            rank: field("r")?.as_u64().context("r is not an integer")? as usize,
            alpha: field("lora_alpha")?
                .as_f64()
                .context("lora_alpha is not a number")? as f32,
            dropout: raw
                .get("lora_dropout")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0) as f32,
            targets,
        };
        let weights_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&weights_path)
            .with_context(|| format!("reading {}", weights_path.display()))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", weights_path.display()))?;
        let read = |name: &str, shape: [usize; 2]| -> Result<Tensor<B, 2>> {
            // PEFT sometimes saves names with the adapter name (".default") in them.
            let view = tensors
                .tensor(name)
                .or_else(|_| tensors.tensor(&name.replace(".weight", ".default.weight")))
                .with_context(|| format!("{}: no tensor {name}", weights_path.display()))?;
            ensure!(
                view.shape() == shape,
                "{}: {name} has shape {:?}, expected {shape:?}",
                weights_path.display(),
                view.shape()
            );
            let values = crate::weights::view_to_f32(&view, name, &weights_path)?;
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
            },
            config,
        ))
    }
}
